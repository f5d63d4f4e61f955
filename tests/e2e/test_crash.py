"""A crash loses nothing: SIGKILL the worker together with its flow run mid-campaign, restart
`campaigns serve`, and the campaign resumes and completes with exactly one message per
recipient (those in flight at the kill end `outcome_unknown`, never sent twice)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from core.db import make_engine, migrate, session_scope
from core.settings import Settings
from deployments.stack import free_port
from models import Message
from tests.e2e.serving import clean_env, start_serve
from tests.factories import bulk_tenant

pytestmark = pytest.mark.e2e


def test_worker_killed_mid_campaign_resumes_without_duplicates(tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(
        CAMPAIGNS_DATA_DIR=str(tmp_path),
        CAMPAIGNS_PREFECT_PORT=str(free_port()),
        CAMPAIGNS_SANDBOX__LATENCY_MS="20",
        CAMPAIGNS_SMS__CONCURRENCY="4",
        CAMPAIGNS_CHUNK_SIZE="200",
        CAMPAIGNS_RECONCILE_INTERVAL_S="2",
        CAMPAIGNS_STALE_AFTER_S="10",
        CAMPAIGNS_SANDBOX__DELIVERY_DELAY_S="0.2",
    )
    settings = Settings(data_dir=tmp_path)
    migrate(settings)
    engine = make_engine(settings.resolved_database_url())
    tenant = bulk_tenant(engine, 2000)
    log = tmp_path / "serve.log"
    serve = start_serve(env, port, log)
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=tenant.headers, timeout=30)
    try:
        cid = api.post(
            "/v1/campaigns",
            json={
                "name": "crash",
                "channel": "sms",
                "body": "hi",
                "contact_list_id": tenant.list_id,
                "sender_id": tenant.sender,
            },
        ).json()["id"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            c = api.get(f"/v1/campaigns/{cid}").json()
            if c["status"] == "processing" and 0 < c["pending_count"] < 1700:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"campaign never got going: {c}")
        workers = subprocess.run(
            ["pgrep", "-f", "deployments.cli worker"], capture_output=True, text=True
        ).stdout.split()
        assert workers
        for pid in workers:  # the runner and its flow-run process, like a machine dying
            os.killpg(int(pid), signal.SIGKILL)
        serve.wait(timeout=60)  # serve notices and stops the rest
        serve = start_serve(env, port, log)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            c = api.get(f"/v1/campaigns/{cid}").json()
            if c["status"] in ("completed", "failed", "cancelled"):
                break
            time.sleep(1)
        assert c["status"] == "completed", c
        assert c["delivered_count"] + c["failed_count"] == c["total_recipients"] == 2000
        with session_scope(engine) as session:
            attempts = session.execute(
                select(func.max(Message.attempts), func.count()).where(Message.campaign_id == cid)
            ).one()
            unknown = session.execute(
                select(func.count()).where(
                    Message.campaign_id == cid, Message.error_code == "outcome_unknown"
                )
            ).scalar_one()
        assert attempts == (1, 2000)  # no message was claimed, let alone sent, twice
        assert unknown == c["failed_count"] and unknown <= 2 * 32  # at most the claimed batches
        assert api.get("/v1/credits").json()["reserved"] == 0
    finally:
        api.close()
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)


def test_power_loss_of_the_whole_tree_ends_with_every_recipient_messaged_exactly_once(tmp_path: Path) -> None:
    """Regression: SIGKILL of `campaigns serve`, its Prefect server, worker and flow together,
    with a Twilio campaign part-sent, then `serve` again on the same data directory: the resumed
    run once waited forever for the sender's Prefect concurrency slot (its lease lived in the
    dead server's memory). Now the slot's lease expires with its holder (or is taken back by
    the same campaign), the messages in flight at the kill are looked up at Twilio, and every
    recipient gets exactly one message; none ends outcome_unknown. A second campaign on the same
    sender completes too."""
    from collections import Counter

    from tests.e2e.serving import kill_tree, wait_for
    from tests.providers import fake_server as fk

    n = 3000
    fakes = fk.FakeProviders(latency_s=0.02, delivery_delay_s=0.2)
    with fk.ServerThread(fakes.app) as server:
        port = free_port()
        env = clean_env(
            CAMPAIGNS_DATA_DIR=str(tmp_path),
            CAMPAIGNS_PREFECT_PORT=str(free_port()),
            CAMPAIGNS_SMS__PROVIDER="twilio",
            CAMPAIGNS_TWILIO__ACCOUNT_SID=fk.TWILIO_SID,
            CAMPAIGNS_TWILIO__AUTH_TOKEN=fk.TWILIO_TOKEN,
            CAMPAIGNS_TWILIO__BASE_URL=f"{server.url}/twilio",
            CAMPAIGNS_SMS__RATE_PER_SECOND="200",
            CAMPAIGNS_SMS__CONCURRENCY="8",
            CAMPAIGNS_RECONCILE_INTERVAL_S="2",
            CAMPAIGNS_STALE_AFTER_S="10",
            CAMPAIGNS_DELIVERY__POLL_INTERVAL_S="0.5",
        )
        settings = Settings(data_dir=tmp_path)
        migrate(settings)
        engine = make_engine(settings.resolved_database_url())
        tenant = bulk_tenant(engine, n, phone_base=16000000000)
        phones = {f"+{16000000000 + i}" for i in range(n)}
        log = tmp_path / "serve.log"
        serve = start_serve(env, port, log)
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=tenant.headers, timeout=30)
        body = {"channel": "sms", "body": "hi", "contact_list_id": tenant.list_id, "sender_id": tenant.sender}
        try:
            cid = api.post("/v1/campaigns", json={"name": "power loss", **body}).json()["id"]
            wait_for(lambda: fakes.count("sms"), lambda k: k >= 900, 120, "sending")
            kill_tree(serve)  # the whole tree at once, Prefect server included
            before = fakes.count("sms")
            assert before < n, "finished before the kill"
            serve = start_serve(env, port, log)
            second = api.post("/v1/campaigns", json={"name": "after the restart", **body}).json()["id"]
            for campaign in (cid, second):
                c = wait_for(
                    lambda campaign=campaign: api.get(f"/v1/campaigns/{campaign}").json(),
                    lambda c: c["status"] in ("completed", "failed", "cancelled"),
                    300,
                    f"campaign {campaign} finishing",
                    1.0,
                )
                assert c["status"] == "completed" and c["delivered_count"] == n, c
            at_fake = Counter(r.to for r in fakes.received)
            assert set(at_fake) == phones and set(at_fake.values()) == {2}  # once per campaign
            with session_scope(engine) as session:
                unknown = session.execute(
                    select(func.count()).where(Message.error_code == "outcome_unknown")
                ).scalar_one()
            assert unknown == 0
            assert api.get("/v1/credits").json()["reserved"] == 0
            print(f"killed with {before} of {n} at the fake; {fakes.lookups} lookups after the restart")
        finally:
            api.close()
            serve.send_signal(signal.SIGTERM)
            serve.wait(timeout=60)
            engine.dispose()
