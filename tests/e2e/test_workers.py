"""Several workers share one campaign (PostgreSQL, one Prefect server, chunks as flow runs).

Worker A (inside `campaigns serve`) runs the campaign's flow and some chunk runs; worker B (a
second `campaigns worker`) takes the others. B is killed together with its chunk processes, like
a machine dying: Prefect's zombie automation marks its chunk runs Crashed, the campaign's run
starts those ranges again, A finishes them (looking up at Twilio what B had in flight), and the
Twilio fake received exactly one message per recipient."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from core.db import make_engine, migrate, session_scope
from core.settings import Settings
from deployments.stack import free_port
from models import Message, MessageStatus
from tests.e2e.serving import clean_env, start_serve
from tests.e2e.serving import descendants as _descendants
from tests.factories import bulk_tenant
from tests.providers import fake_server as fk

pytestmark = pytest.mark.e2e

N = 2400
RUN_SIZE = 600  # four chunk runs, all in flight at once


def _chunk_runs(prefect_api: str, campaign_id: str) -> list[dict[str, Any]]:
    r = httpx.post(
        f"{prefect_api}/flow_runs/filter",
        json={"flow_runs": {"tags": {"all_": [f"campaign:{campaign_id}"]}}, "limit": 200},
        timeout=30,
    )
    r.raise_for_status()
    return list(r.json())


def _worker_of(run: dict[str, Any]) -> str | None:
    return next((t.removeprefix("worker:") for t in run["tags"] if t.startswith("worker:")), None)


def _handed_over(engine: Any, campaign_id: str, start: int, end: int) -> int:
    with session_scope(engine) as session:
        return int(
            session.execute(
                select(func.count()).where(
                    Message.campaign_id == campaign_id,
                    Message.seq >= start,
                    Message.seq < end,
                    Message.status.in_([MessageStatus.sent, MessageStatus.delivered]),  # type: ignore[attr-defined]
                )
            ).scalar_one()
        )


def test_two_workers_share_a_campaign_and_survive_one_being_killed(own_pg_url: str, tmp_path: Path) -> None:
    pg_url = own_pg_url
    fakes = fk.FakeProviders(latency_s=0.1, delivery_delay_s=0.2)
    port, prefect_port = free_port(), free_port()
    prefect_api = f"http://127.0.0.1:{prefect_port}/api"
    with fk.ServerThread(fakes.app) as fake:
        common = {
            "CAMPAIGNS_DATABASE_URL": pg_url,
            "CAMPAIGNS_DISTRIBUTE_CHUNKS": "true",
            "CAMPAIGNS_CHUNK_RUN_SIZE": str(RUN_SIZE),
            "CAMPAIGNS_CHUNK_CONCURRENCY": "4",
            "CAMPAIGNS_RUNNER_LIMIT": "3",  # A: the campaign's run and two chunk runs
            "CAMPAIGNS_RECONCILE_INTERVAL_S": "2",
            "CAMPAIGNS_SMS__PROVIDER": "twilio",
            "CAMPAIGNS_SMS__RATE_PER_SECOND": "0",
            "CAMPAIGNS_SMS__CONCURRENCY": "8",  # 2 per chunk run
            "CAMPAIGNS_TWILIO__ACCOUNT_SID": fk.TWILIO_SID,
            "CAMPAIGNS_TWILIO__AUTH_TOKEN": fk.TWILIO_TOKEN,
            "CAMPAIGNS_TWILIO__BASE_URL": f"{fake.url}/twilio",
            "CAMPAIGNS_DELIVERY__POLL_INTERVAL_S": "0.5",
            "PREFECT_LOGGING_LEVEL": "WARNING",
        }
        env_a = clean_env(
            CAMPAIGNS_DATA_DIR=str(tmp_path / "a"), CAMPAIGNS_PREFECT_PORT=str(prefect_port), **common
        )
        env_b = clean_env(
            CAMPAIGNS_DATA_DIR=str(tmp_path / "b"),
            PREFECT_API_URL=prefect_api,
            PREFECT_HOME=str(tmp_path / "b-prefect"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_RUNNER_POLL_FREQUENCY="2",
            **common,
        )
        settings = Settings(database_url=pg_url)
        migrate(settings)
        engine = make_engine(pg_url)
        tenant = bulk_tenant(engine, N)
        log = tmp_path / "serve.log"
        serve = start_serve(env_a, port, log)
        worker_b: subprocess.Popen[bytes] | None = None
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=tenant.headers, timeout=30)
        try:
            cid = api.post(
                "/v1/campaigns",
                json={
                    "name": "two workers",
                    "channel": "sms",
                    "body": "hi {{first_name}}",
                    "contact_list_id": tenant.list_id,
                    "sender_id": tenant.sender,
                },
            ).json()["id"]
            # A takes the campaign's run and two chunk runs; B, started now, takes the other two.
            deadline = time.monotonic() + 90
            while api.get(f"/v1/campaigns/{cid}").json()["status"] != "processing":
                assert time.monotonic() < deadline, "the campaign never started"
                time.sleep(0.3)
            worker_b = subprocess.Popen(
                [sys.executable, "-m", "deployments.cli", "worker"],
                env=env_b,
                stdout=(tmp_path / "worker-b.log").open("a"),
                stderr=subprocess.STDOUT,
            )
            name_b = f"campaigns-{socket.gethostname()}-{worker_b.pid}"
            deadline = time.monotonic() + 90
            while True:
                assert time.monotonic() < deadline, f"B never sent: {_chunk_runs(prefect_api, cid)}"
                current = _chunk_runs(prefect_api, cid)
                runs_b = [r for r in current if _worker_of(r) == name_b]
                # A run a worker took but has not tagged yet could be B's too: wait for it.
                starting = [
                    r for r in current if _worker_of(r) is None and r["state_type"] in ("PENDING", "RUNNING")
                ]
                sent = [
                    _handed_over(engine, cid, r["parameters"]["start"], r["parameters"]["end"])
                    for r in runs_b
                ]
                sent_b = sum(sent)
                if runs_b and min(sent) >= 10 and not starting:  # every chunk run of B is sending
                    break
                time.sleep(0.5)
            # Kill B and its chunk processes at once, mid-chunk.
            victims = [worker_b.pid, *_descendants(worker_b.pid)]
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
            worker_b.wait(timeout=10)
            ranges_b = {(r["parameters"]["start"], r["parameters"]["end"]) for r in runs_b}
            assert all(_handed_over(engine, cid, s, e) < e - s for s, e in ranges_b), "B finished already"

            deadline = time.monotonic() + 300  # the zombie automation needs 3 heartbeats (90 s)
            while True:
                c = api.get(f"/v1/campaigns/{cid}").json()
                if c["status"] in ("completed", "failed", "cancelled"):
                    break
                assert time.monotonic() < deadline, f"campaign did not finish: {c}"
                time.sleep(1)
            assert c["status"] == "completed", c
            assert c["total_recipients"] == N

            runs = _chunk_runs(prefect_api, cid)
            by_worker: dict[str | None, list[dict[str, Any]]] = {}
            for r in runs:
                by_worker.setdefault(_worker_of(r), []).append(r)
            assert name_b in by_worker and len(by_worker) == 2, {
                k: [(r["name"], r["state_type"], r["state_name"], r["idempotency_key"]) for r in v]
                for k, v in by_worker.items()
            }
            assert {r["state_type"] for r in by_worker[name_b]} == {"CRASHED"}
            name_a = next(k for k in by_worker if k != name_b)
            # A re-ran B's ranges as new attempts and completed everything.
            redone = {
                (r["parameters"]["start"], r["parameters"]["end"])
                for r in by_worker[name_a]
                if r["state_type"] == "COMPLETED" and not r["idempotency_key"].endswith(":1")
            }
            assert ranges_b <= redone

            with session_scope(engine) as session:
                rows = session.execute(
                    select(Message.to_address, Message.status, Message.error_code, Message.attempts).where(
                        Message.campaign_id == cid
                    )
                ).all()
            assert len(rows) == N and max(r.attempts for r in rows) == 1  # nothing claimed twice
            unknown = {r.to_address for r in rows if r.error_code == "outcome_unknown"}
            accepted = {r.to_address for r in rows if r.status in ("sent", "delivered")}
            # B's messages in flight at the kill were looked up at Twilio: none stays unknown.
            assert len(accepted) == N and unknown == set()
            at_fake: dict[str, int] = {}
            for received in fakes.received:
                at_fake[received.to] = at_fake.get(received.to, 0) + 1
            assert set(at_fake.values()) == {1} and set(at_fake) == accepted  # exactly once each
            assert api.get("/v1/credits").json()["reserved"] == 0
            print(
                f"B sent {sent_b} before the kill; chunk runs {[(k, len(v)) for k, v in by_worker.items()]}; "
                f"{len(unknown)} outcome_unknown; {len(at_fake)} recipients reached the fake once"
            )
        finally:
            api.close()
            if worker_b is not None and worker_b.poll() is None:
                worker_b.send_signal(signal.SIGTERM)
                worker_b.wait(timeout=60)
            serve.send_signal(signal.SIGTERM)
            serve.wait(timeout=60)
