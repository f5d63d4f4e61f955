"""End to end: `campaigns serve` as a subprocess on free ports, bootstrapped with the CLI,
driven over HTTP like a user would."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from deployments.stack import free_port
from tests.e2e.serving import clean_env, cli_json, start_serve

pytestmark = pytest.mark.e2e


class Served:
    def __init__(self, url: str, env: dict[str, str], proc: subprocess.Popen[bytes]) -> None:
        self.url, self.env, self.proc = url, env, proc

    def cli(self, *args: str) -> dict[str, Any]:
        return cli_json(self.env, *args)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data = tmp_path_factory.mktemp("serve")
    port = free_port()
    env = clean_env(
        CAMPAIGNS_DATA_DIR=str(data),
        CAMPAIGNS_PREFECT_PORT=str(free_port()),
        CAMPAIGNS_API__RATE_PER_SECOND="1000",
        CAMPAIGNS_API__BURST="1000",
        CAMPAIGNS_SANDBOX__DELIVERY_DELAY_S="1",
        CAMPAIGNS_DELIVERY__POLL_INTERVAL_S="0.5",
        CAMPAIGNS_RECONCILE_INTERVAL_S="2",
        CAMPAIGNS_CHUNK_SIZE="100",
    )
    proc = start_serve(env, port, data / "serve.log")
    yield Served(f"http://127.0.0.1:{port}", env, proc)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def tenant(served: Served) -> dict[str, Any]:
    account = served.cli("accounts", "create", "e2e shop", "--credits", "1000")
    served.cli(
        "sender-ids", "add", account["account_id"], "--channel", "sms", "--value", "SHOP", "--approved"
    )
    headers = {"Authorization": f"Bearer {account['api_key']}"}
    with httpx.Client(base_url=served.url, headers=headers, timeout=30) as api:
        lst = api.post("/v1/contact-lists", json={"name": "all"}).json()
        for i in range(60):
            phone = "+15005550001" if i == 0 else f"+1415555{i:04d}"
            r = api.post("/v1/contacts", json={"name": f"Person {i}", "phone": phone, "lists": [lst["id"]]})
            assert r.status_code == 201, r.text
    return {**account, "headers": headers, "list_id": lst["id"]}


def _campaign(api: httpx.Client, tenant: dict[str, Any], **over: Any) -> httpx.Response:
    return api.post(
        "/v1/campaigns",
        json={
            "name": "e2e",
            "channel": "sms",
            "contact_list_id": tenant["list_id"],
            "sender_id": "SHOP",
            "body": "Hello {{first_name}}",
            **over,
        },
    )


def _wait(api: httpx.Client, cid: str, until: set[str], timeout: float) -> tuple[dict[str, Any], list[str]]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c = api.get(f"/v1/campaigns/{cid}").json()
        if not seen or seen[-1] != c["status"]:
            seen.append(c["status"])
        if c["status"] in until:
            return c, seen
        time.sleep(0.2)
    raise AssertionError(f"campaign {cid} stuck; statuses seen {seen}")


def test_campaign_completes_through_serve(served: Served, tenant: dict[str, Any]) -> None:
    with httpx.Client(base_url=served.url, headers=tenant["headers"], timeout=30) as api:
        r = _campaign(api, tenant)
        assert r.status_code == 201, r.text
        c, seen = _wait(api, r.json()["id"], {"completed", "failed"}, 120)
        assert c["status"] == "completed", c
        assert seen[0] == "draft" and seen[-1] == "completed"
        assert "sent" in seen or "processing" in seen, seen
        assert (c["total_recipients"], c["delivered_count"], c["failed_count"]) == (60, 59, 1)
        failed = api.get(f"/v1/campaigns/{c['id']}/messages?status=failed").json()["data"]
        assert [m["error_code"] for m in failed] == ["invalid_recipient"]
        assert api.get("/v1/credits").json() == {"balance": 1000 - 59, "reserved": 0, "available": 1000 - 59}


def test_scheduled_campaign_runs_at_its_time(served: Served, tenant: dict[str, Any]) -> None:
    when = (datetime.now(UTC) + timedelta(seconds=20)).replace(microsecond=0)
    with httpx.Client(base_url=served.url, headers=tenant["headers"], timeout=30) as api:
        r = _campaign(api, tenant, scheduled_at=when.isoformat().replace("+00:00", "Z"))
        assert r.status_code == 201 and r.json()["status"] == "scheduled"
        cid = r.json()["id"]
        time.sleep(1)
        c = api.get(f"/v1/campaigns/{cid}").json()
        assert c["status"] == "scheduled" and c["flow_run_id"]
        prefect = served.env.get("PREFECT_API_URL") or (
            f"http://127.0.0.1:{served.env['CAMPAIGNS_PREFECT_PORT']}/api"
        )
        run = httpx.get(f"{prefect}/flow_runs/{c['flow_run_id']}").json()
        # Named after the campaign's id, then its name (what a person recognises in the UI).
        assert run["state"]["type"] == "SCHEDULED" and run["name"] == f"{cid} · e2e"
        c, _ = _wait(api, cid, {"completed", "failed"}, 120)
        assert c["status"] == "completed"
        started = datetime.fromisoformat(c["started_at"].replace("Z", "+00:00"))
        first_sent = min(
            m["sent_at"]
            for m in api.get(f"/v1/campaigns/{cid}/messages?per_page=100").json()["data"]
            if m["sent_at"]
        )
        assert datetime.fromisoformat(first_sent.replace("Z", "+00:00")) >= when
        assert started <= datetime.fromisoformat(c["completed_at"].replace("Z", "+00:00"))


def test_cancelled_scheduled_campaign_returns_its_credits(served: Served, tenant: dict[str, Any]) -> None:
    when = (datetime.now(UTC) + timedelta(minutes=10)).isoformat().replace("+00:00", "Z")
    with httpx.Client(base_url=served.url, headers=tenant["headers"], timeout=30) as api:
        before = api.get("/v1/credits").json()
        cid = _campaign(api, tenant, scheduled_at=when).json()["id"]
        assert api.get("/v1/credits").json()["reserved"] == before["reserved"] + 60
        r = api.post(f"/v1/campaigns/{cid}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        assert api.get("/v1/credits").json() == before
        time.sleep(3)  # the reconciler must not resurrect it
        assert api.get(f"/v1/campaigns/{cid}").json()["status"] == "cancelled"


def test_over_budget_campaign_is_refused(served: Served, tenant: dict[str, Any]) -> None:
    with httpx.Client(base_url=served.url, headers=tenant["headers"], timeout=30) as api:
        before = api.get("/v1/credits").json()
        r = _campaign(api, tenant, body="Hi {{first_name}} " + "ж" * 1500)  # 23 segments x 60 > 1000
        assert r.status_code == 422 and r.json()["error"] == "insufficient_credits"
        assert api.get("/v1/credits").json() == before


def test_second_serve_on_the_same_data_dir_fails_clearly(served: Served) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "deployments.cli", "serve", "--port", str(free_port())],
        env=served.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    assert "already using data dir" in r.stderr


def test_sigterm_stops_every_child(served: Served, tenant: dict[str, Any]) -> None:
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(timeout=60) == 0
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{served.url}/healthz", timeout=2)
    prefect_port = served.env["CAMPAIGNS_PREFECT_PORT"]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{prefect_port}/api/health", timeout=2)
