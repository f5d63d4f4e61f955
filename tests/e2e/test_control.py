"""Campaign control through `campaigns serve` (SPEC §7), against the Twilio fake on 127.0.0.1:
pause and resume (from the API and from Prefect, as the UI's buttons do), pause of a scheduled
campaign, cancel mid-campaign, a PATCH that reschedules, and a retry after a provider outage.
Every recipient gets exactly one message."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from core.db import make_engine, migrate
from core.settings import Settings
from deployments.stack import free_port
from tests.e2e.serving import clean_env, start_serve, wait_for
from tests.factories import Tenant, bulk_tenant
from tests.providers import fake_server as fk

pytestmark = pytest.mark.e2e
RATE = 100  # messages a second (Twilio's default pacing is 10/s)
CONCURRENCY = 4
FINAL = ("completed", "failed", "cancelled")



def _prefect_post(url: str, body: dict[str, Any]) -> httpx.Response:
    """POST to the Prefect API as its UI and client do: a 503 is Prefect's "retry" (its SQLite
    was busy; seen once in CI on /resume), so try again a few times."""
    for _ in range(10):
        r = httpx.post(url, json=body, timeout=10)
        if r.status_code != 503:
            return r
        time.sleep(1)
    return r

@dataclass
class Served:
    api: str
    prefect: str
    engine: Engine
    fakes: fk.FakeProviders
    env: dict[str, str]
    next_phone: list[int]

    def tenant(self, n: int) -> tuple[Tenant, httpx.Client, list[str]]:
        """A new account with `n` SMS contacts whose numbers no other test uses."""
        base = self.next_phone[0]
        self.next_phone[0] += 100_000
        tenant = bulk_tenant(self.engine, n, phone_base=base, credits_amount=10 * n)
        client = httpx.Client(base_url=self.api, headers=tenant.headers, timeout=30)
        return tenant, client, [f"+{base + i}" for i in range(n)]

    def at_fake(self, phones: list[str]) -> Counter[str]:
        """Messages the fake accepted, per recipient of `phones`."""
        wanted = set(phones)
        return Counter(r.to for r in list(self.fakes.received) if r.to in wanted)

    def arrivals_after(self, phones: list[str], when: float) -> int:
        wanted = set(phones)
        return sum(1 for at, to in list(self.fakes.arrivals) if to in wanted and at > when)

    def run_state(self, flow_run_id: str) -> dict[str, Any]:
        state = httpx.get(f"{self.prefect}/flow_runs/{flow_run_id}", timeout=10).json()["state"]
        return state or {}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data = tmp_path_factory.mktemp("control")
    fakes = fk.FakeProviders(latency_s=0.02, delivery_delay_s=0.2)
    with fk.ServerThread(fakes.app) as server:
        port, prefect_port = free_port(), free_port()
        env = clean_env(
            CAMPAIGNS_DATA_DIR=str(data),
            CAMPAIGNS_PREFECT_PORT=str(prefect_port),
            CAMPAIGNS_SMS__PROVIDER="twilio",
            CAMPAIGNS_TWILIO__ACCOUNT_SID=fk.TWILIO_SID,
            CAMPAIGNS_TWILIO__AUTH_TOKEN=fk.TWILIO_TOKEN,
            CAMPAIGNS_TWILIO__BASE_URL=f"{server.url}/twilio",
            CAMPAIGNS_SMS__RATE_PER_SECOND=str(RATE),
            CAMPAIGNS_SMS__CONCURRENCY=str(CONCURRENCY),
            CAMPAIGNS_DELIVERY__POLL_INTERVAL_S="0.5",
            CAMPAIGNS_DELIVERY__RETRY_WINDOW_S="2",
            CAMPAIGNS_DELIVERY__MAX_BACKOFF_S="0.5",
            CAMPAIGNS_RECONCILE_INTERVAL_S="2",
        )
        settings = Settings(data_dir=Path(data))
        migrate(settings)
        engine = make_engine(settings.resolved_database_url())
        log = data / "serve.log"
        proc = start_serve(env, port, log)
        try:
            yield Served(
                f"http://127.0.0.1:{port}",
                f"http://127.0.0.1:{prefect_port}/api",
                engine,
                fakes,
                env,
                [13000000000],
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            engine.dispose()


def _create(client: httpx.Client, tenant: Tenant, **over: Any) -> dict[str, Any]:
    body = {
        "name": "control",
        "channel": "sms",
        "contact_list_id": tenant.list_id,
        "sender_id": tenant.sender,
        "body": "Hello {{name}}",
        **over,
    }
    r = client.post("/v1/campaigns", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def _get(client: httpx.Client, cid: str) -> dict[str, Any]:
    return client.get(f"/v1/campaigns/{cid}").json()


def _final(client: httpx.Client, cid: str, timeout: float = 180) -> dict[str, Any]:
    return wait_for(
        lambda: _get(client, cid), lambda c: c["status"] in FINAL, timeout, f"{cid} finishing", 1.0
    )


def _sending(served: Served, phones: list[str], at_least: int) -> None:
    wait_for(lambda: sum(served.at_fake(phones).values()), lambda n: n >= at_least, 120, "sending")


def _suspended(served: Served, flow_run_id: str) -> dict[str, Any]:
    return wait_for(
        lambda: served.run_state(flow_run_id), lambda s: s.get("type") == "PAUSED", 60, "the run's suspension"
    )


def _exactly_once(served: Served, phones: list[str]) -> None:
    counts = served.at_fake(phones)
    assert set(counts) == set(phones) and set(counts.values()) == {1}, counts.most_common(3)


def test_pause_stops_sending_and_resume_finishes_exactly_once(served: Served) -> None:
    tenant, client, phones = served.tenant(1500)
    c = _create(client, tenant)
    _sending(served, phones, 100)
    r = client.post(f"/v1/campaigns/{c['id']}/pause")
    answered = time.time()
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "paused" and r.json()["paused_at"].endswith("Z")
    time.sleep(1.0)  # requests in flight at the answer finish and are recorded
    frozen = sum(served.at_fake(phones).values())
    time.sleep(5.0)
    assert sum(served.at_fake(phones).values()) == frozen < 1500  # the count does not move
    assert served.arrivals_after(phones, answered + 0.5) == 0  # no request started after the answer
    state = _suspended(served, _get(client, c["id"])["flow_run_id"])
    assert state["name"] == "Suspended"
    paused = _get(client, c["id"])
    assert paused["status"] == "paused" and paused["credits_reserved"] > 0  # credits stay held
    r = client.post(f"/v1/campaigns/{c['id']}/resume")
    assert r.status_code == 200 and r.json()["status"] == "processing"
    done = _final(client, c["id"])
    assert done["status"] == "completed" and done["delivered_count"] == 1500, done
    _exactly_once(served, phones)


def test_resume_from_prefect_continues_the_campaign(served: Served) -> None:
    """The UI's Resume button calls POST /flow_runs/{id}/resume; the campaign goes on."""
    tenant, client, phones = served.tenant(800)
    c = _create(client, tenant)
    _sending(served, phones, 50)
    assert client.post(f"/v1/campaigns/{c['id']}/pause").json()["status"] == "paused"
    run_id = _get(client, c["id"])["flow_run_id"]
    _suspended(served, run_id)
    r = _prefect_post(f"{served.prefect}/flow_runs/{run_id}/resume", {})
    assert r.status_code in (200, 201) and r.json()["status"] == "ACCEPT", r.text
    wait_for(lambda: _get(client, c["id"]), lambda x: x["status"] != "paused", 60, "the campaign's resume")
    done = _final(client, c["id"])
    assert done["status"] == "completed" and done["delivered_count"] == 800
    _exactly_once(served, phones)


def test_suspend_in_the_prefect_ui_pauses_the_campaign(served: Served) -> None:
    """The UI's Suspend button sets the running run Suspended (with a 300 s timeout): the
    campaign pauses instead of being stranded, and resumes through the API."""
    tenant, client, phones = served.tenant(1500)
    c = _create(client, tenant)
    _sending(served, phones, 100)
    run_id = _get(client, c["id"])["flow_run_id"]
    suspended = {
        "type": "PAUSED",
        "name": "Suspended",
        "state_details": {
            "pause_timeout": (datetime.now(UTC) + timedelta(seconds=300)).isoformat(),
            "pause_reschedule": True,
        },
    }
    r = _prefect_post(f"{served.prefect}/flow_runs/{run_id}/set_state", {"state": suspended})
    assert r.json()["status"] == "ACCEPT", r.text
    wait_for(lambda: _get(client, c["id"]), lambda x: x["status"] == "paused", 30, "the campaign's pause")
    time.sleep(3)
    frozen = sum(served.at_fake(phones).values())
    time.sleep(3)
    assert sum(served.at_fake(phones).values()) == frozen < 1500
    # The run suspends itself again without a timeout: Prefect never fails it for waiting.
    wait_for(
        lambda: served.run_state(run_id),
        lambda s: s.get("type") == "PAUSED" and s["state_details"].get("pause_timeout") is None,
        30,
        "a suspension without timeout",
    )
    assert client.post(f"/v1/campaigns/{c['id']}/resume").status_code == 200
    done = _final(client, c["id"])
    assert done["status"] == "completed" and done["delivered_count"] == 1500
    _exactly_once(served, phones)


def test_pause_a_scheduled_campaign(served: Served) -> None:
    tenant, client, phones = served.tenant(20)
    when = datetime.now(UTC) + timedelta(seconds=8)
    c = _create(client, tenant, scheduled_at=when.strftime("%Y-%m-%dT%H:%M:%SZ"))
    r = client.post(f"/v1/campaigns/{c['id']}/pause")
    assert r.status_code == 200 and r.json()["status"] == "paused"
    _suspended(served, c["flow_run_id"])
    time.sleep(max(0.0, (when - datetime.now(UTC)).total_seconds()) + 6)
    assert served.at_fake(phones) == Counter() and _get(client, c["id"])["status"] == "paused"
    r = client.post(f"/v1/campaigns/{c['id']}/resume")
    assert r.status_code == 200 and r.json()["status"] == "processing"  # its time has passed
    done = _final(client, c["id"])
    assert done["status"] == "completed" and done["delivered_count"] == 20
    _exactly_once(served, phones)


def test_cancel_mid_campaign_sends_nothing_after_the_answer(served: Served) -> None:
    tenant, client, phones = served.tenant(1500)
    c = _create(client, tenant)
    _sending(served, phones, 100)
    r = client.post(f"/v1/campaigns/{c['id']}/cancel")
    answered = time.time()
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    time.sleep(3)
    assert served.arrivals_after(phones, answered + 0.5) == 0
    accepted = sum(served.at_fake(phones).values())
    assert 100 <= accepted < 1500
    state = wait_for(
        lambda: served.run_state(c["flow_run_id"]),
        lambda s: s.get("type") == "CANCELLED",
        60,
        "the run's end",
    )
    assert state["type"] == "CANCELLED"
    done = wait_for(lambda: _get(client, c["id"]), lambda x: x["pending_count"] == 0, 30, "finalization")
    assert done["delivered_count"] + done["sent_count"] == accepted  # in-flight ones were recorded
    cancelled = client.get(f"/v1/campaigns/{c['id']}/messages?status=failed&per_page=1").json()
    assert cancelled["meta"]["total"] == 1500 - accepted
    assert cancelled["data"][0]["error_code"] == "cancelled"
    assert done["credits_reserved"] == 0 and done["credits_used"] == accepted  # accepted ones charged
    assert client.get("/v1/credits").json()["reserved"] == 0
    assert sum(served.at_fake(phones).values()) == accepted


def test_a_patch_that_reschedules(served: Served) -> None:
    tenant, client, phones = served.tenant(10)
    c = _create(
        client,
        tenant,
        scheduled_at=(datetime.now(UTC) + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    when = datetime.now(UTC) + timedelta(seconds=6)
    r = client.patch(
        f"/v1/campaigns/{c['id']}",
        json={"scheduled_at": when.strftime("%Y-%m-%dT%H:%M:%SZ"), "body": "Moved {{name}}"},
    )
    assert r.status_code == 200 and r.json()["status"] == "scheduled", r.text
    done = _final(client, c["id"], timeout=60)  # not 10 minutes
    assert done["status"] == "completed" and done["delivered_count"] == 10
    first = min(at for at, to in served.fakes.arrivals if to in set(phones))
    assert first >= when.replace(microsecond=0).timestamp()  # nothing before the new time
    assert {r.body for r in served.fakes.received if r.to in set(phones)} == {
        f"Moved Person {i}" for i in range(10)
    }


def test_retry_after_a_provider_outage_sends_only_the_transient_failures(served: Served) -> None:
    tenant, client, phones = served.tenant(20)
    down = set(phones[:8])
    served.fakes.outage |= down
    try:
        c = _create(client, tenant)
        done = _final(client, c["id"])
    finally:
        served.fakes.outage -= down
    assert done["status"] == "completed" and (done["delivered_count"], done["failed_count"]) == (12, 8)
    r = client.post(f"/v1/campaigns/{c['id']}/retry")
    assert r.status_code == 201, r.text
    retry = r.json()
    assert retry["retry_of"] == c["id"] and retry["total_recipients"] == 8
    again = _final(client, retry["id"])
    assert again["status"] == "completed" and again["delivered_count"] == 8
    _exactly_once(served, phones)
    assert _get(client, c["id"])["failed_count"] == 8  # the original is unchanged
