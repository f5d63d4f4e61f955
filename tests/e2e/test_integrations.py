"""End to end through `campaigns serve` (SPEC §9): event webhooks reach a local receiver signed
and in order, through a receiver that fails and through a kill -9 of the whole serve tree;
GET /metrics shows the families with live values."""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from deployments.stack import free_port
from tests.e2e.serving import clean_env, cli_json, kill_tree, start_serve, wait_for

pytestmark = pytest.mark.e2e


class Receiver:
    """An HTTP endpoint on 127.0.0.1 that records every POST and fails while `failing` > 0."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes, int]] = []
        self.failing = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.lock:
                    status = 500 if receiver.failing else 200
                    if receiver.failing > 0:
                        receiver.failing -= 1
                    receiver.received.append((dict(self.headers.items()), body, status))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def delivered(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(b) | {"_headers": h} for h, b, status in self.received if status == 200]


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The README's verification recipe."""
    parts = dict(p.split("=", 1) for p in headers["X-Campaigns-Signature"].split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"]) and abs(time.time() - int(parts["t"])) < 300


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def _env(data: Path) -> dict[str, str]:
    return clean_env(
        CAMPAIGNS_DATA_DIR=str(data),
        CAMPAIGNS_PREFECT_PORT=str(free_port()),
        CAMPAIGNS_API__RATE_PER_SECOND="1000",
        CAMPAIGNS_API__BURST="1000",
        CAMPAIGNS_SANDBOX__DELIVERY_DELAY_S="0.5",
        CAMPAIGNS_SANDBOX__LATENCY_MS="50",
        CAMPAIGNS_DELIVERY__POLL_INTERVAL_S="0.5",
        CAMPAIGNS_RECONCILE_INTERVAL_S="2",
        CAMPAIGNS_WEBHOOKS__ALLOW_PRIVATE="true",
        CAMPAIGNS_WEBHOOKS__MAX_BACKOFF_S="1",
        CAMPAIGNS_WEBHOOKS__POLL_INTERVAL_S="0.2",
    )


def test_events_reach_a_receiver_signed_in_order_through_failures_and_a_restart(
    tmp_path: Path, receiver: Receiver
) -> None:
    env = _env(tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    proc = start_serve(env, port, log)
    try:
        account = cli_json(env, "accounts", "create", "hooks", "--credits", "1000")
        cli_json(
            env,
            "sender-ids",
            "add",
            account["account_id"],
            "--channel",
            "sms",
            "--value",
            "SHOP",
            "--approved",
        )
        headers = {"Authorization": f"Bearer {account['api_key']}"}
        api = httpx.Client(base_url=url, headers=headers, timeout=30)
        r = api.post(
            "/v1/webhook-endpoints",
            json={"url": receiver.url, "events": ["campaign.status_changed", "message.failed"]},
        )
        assert r.status_code == 201, r.text
        secret = r.json()["secret"]
        lst = api.post("/v1/contact-lists", json={"name": "all"}).json()
        for i in range(40):
            phone = "+15005550001" if i == 0 else f"+1415555{i:04d}"  # +15005550001: rejected
            assert (
                api.post(
                    "/v1/contacts", json={"name": f"P {i}", "phone": phone, "lists": [lst["id"]]}
                ).status_code
                == 201
            )

        receiver.failing = 2  # the first two deliveries are answered 500
        body = {
            "name": "hooks",
            "channel": "sms",
            "contact_list_id": lst["id"],
            "sender_id": "SHOP",
            "body": "Hi {{first_name}}",
        }
        campaign = api.post("/v1/campaigns", json=body).json()
        seen: dict[str, set[str]] = {}

        def scrape() -> dict[str, Any]:
            text = httpx.get(f"{url}/metrics", timeout=10).text
            return {f.name: f for f in text_string_to_metric_families(text)}

        def during() -> str:
            status = api.get(f"/v1/campaigns/{campaign['id']}").json()["status"]
            families = scrape()
            for name, family in families.items():
                seen.setdefault(name, set()).update(str(s.labels) for s in family.samples if s.value)
            return str(status)

        wait_for(during, lambda s: s == "completed", 120, "the campaign completing", every=0.5)
        done = api.get(f"/v1/campaigns/{campaign['id']}").json()
        assert done["failed_count"] == 1 and done["delivered_count"] == 39

        def changes() -> list[str]:
            return [
                e["data"]["campaign"]["status"]
                for e in receiver.delivered()
                if e["type"] == "campaign.status_changed" and e["data"]["campaign"]["id"] == campaign["id"]
            ]

        wait_for(changes, lambda c: c and c[-1] == "completed", 60, "the completed event")
        statuses = changes()
        # In order of occurrence: a subsequence of the life cycle, each change once.
        order = ["processing", "sent", "completed"]
        assert statuses[0] == "processing" and statuses[-1] == "completed", statuses
        assert [order.index(s) for s in statuses] == sorted({order.index(s) for s in statuses}), statuses
        assert [s for h, b, s in receiver.received][:2] == [500, 500]
        first_failed = json.loads(receiver.received[0][1])["id"]
        assert first_failed in {e["id"] for e in receiver.delivered()}  # retried with the same id
        for h, b, _status in receiver.received:
            assert verify(secret, h, b)
        failed = [e for e in receiver.delivered() if e["type"] == "message.failed"]
        assert len({e["id"] for e in failed}) == 1
        assert failed[0]["data"]["message"]["to"] == "+15005550001"
        assert failed[0]["data"]["message"]["status"] in ("failed", "undelivered")

        # Metrics: every SPEC family, with live values while the campaign ran.
        families = scrape()
        for name in (
            "campaigns_messages_total",
            "campaigns_provider_requests",
            "campaigns_provider_request_seconds",
            "campaigns_campaigns",
            "campaigns_http_requests",
            "campaigns_http_request_seconds",
        ):
            assert name in families, sorted(families)
        assert seen["campaigns_messages_total"] and seen["campaigns_http_requests"]
        delivered = [
            s
            for s in families["campaigns_messages_total"].samples
            if s.labels == {"channel": "sms", "status": "delivered"}
        ]
        assert delivered and delivered[0].value == 39

        # An event raised while the receiver is down waits in the outbox through a kill -9 of the
        # whole serve tree, and is delivered by the restarted one.
        receiver.failing = 10**6
        later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        scheduled = api.post("/v1/campaigns", json={**body, "scheduled_at": later}).json()
        assert api.post(f"/v1/campaigns/{scheduled['id']}/cancel").json()["status"] == "cancelled"
        wait_for(
            lambda: len(receiver.received),
            lambda n: n > 0 and receiver.received[-1][2] == 500,
            30,
            "a failed delivery of the cancel event",
        )
        kill_tree(proc)
        receiver.failing = 0
        proc = start_serve(env, port, log)

        def cancelled() -> list[dict[str, Any]]:
            return [e for e in receiver.delivered() if e["data"]["campaign"]["id"] == scheduled["id"]]

        wait_for(
            cancelled,
            lambda e: any(x["data"]["campaign"]["status"] == "cancelled" for x in e),
            90,
            "the cancel event after the restart",
        )
        for h, b, _status in receiver.received:
            assert verify(secret, h, b)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
