"""A recurring campaign through `campaigns serve` (SPEC §8): a schedule created over HTTP fires,
survives a kill -9 of the whole serve tree and a restart on the same data directory, and fires
again; what an operator sees in Prefect (the schedule, run names, tags, artifacts) is checked
through the Prefect API."""

from __future__ import annotations

import json
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployments.stack import free_port
from tests.e2e.serving import clean_env, cli_json, kill_tree, start_serve, wait_for

pytestmark = pytest.mark.e2e
INTERVAL_S = 15


class Prefect:
    """The Prefect server's REST API, as the UI reads it."""

    def __init__(self, port: int) -> None:
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}/api", timeout=30)

    def launch_deployment(self) -> dict[str, Any]:
        return self.http.get("/deployments/name/launch-campaign/default").raise_for_status().json()

    def schedules(self) -> dict[str, dict[str, Any]]:
        deployment = self.launch_deployment()
        found = self.http.get(f"/deployments/{deployment['id']}/schedules").raise_for_status().json()
        return {s["slug"]: s for s in found if s.get("slug")}

    def run(self, flow_run_id: str) -> dict[str, Any]:
        return self.http.get(f"/flow_runs/{flow_run_id}").raise_for_status().json()

    def runs_tagged(self, tag: str) -> list[dict[str, Any]]:
        body = {"flow_runs": {"tags": {"all_": [tag]}}, "limit": 200}
        return self.http.post("/flow_runs/filter", json=body).raise_for_status().json()  # type: ignore[no-any-return]

    def artifacts(self, flow_run_id: str) -> dict[str, dict[str, Any]]:
        body = {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}
        found = self.http.post("/artifacts/filter", json=body).raise_for_status().json()
        return {a["key"].split("-")[0]: a for a in found if a.get("key")}


def _env(data: Path, prefect_port: int) -> dict[str, str]:
    return clean_env(
        CAMPAIGNS_DATA_DIR=str(data),
        CAMPAIGNS_PREFECT_PORT=str(prefect_port),
        CAMPAIGNS_API__RATE_PER_SECOND="1000",
        CAMPAIGNS_API__BURST="1000",
        CAMPAIGNS_SANDBOX__DELIVERY_DELAY_S="0.2",
        CAMPAIGNS_DELIVERY__POLL_INTERVAL_S="0.5",
        CAMPAIGNS_RECONCILE_INTERVAL_S="2",
    )


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_a_schedule_fires_survives_a_restart_and_fires_again(tmp_path: Path) -> None:
    prefect_port = free_port()
    env = _env(tmp_path, prefect_port)
    port = free_port()
    log = tmp_path / "serve.log"
    proc = start_serve(env, port, log)
    prefect = Prefect(prefect_port)
    try:
        account = cli_json(env, "accounts", "create", "recurring", "--credits", "1000")
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
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {account['api_key']}"},
            timeout=30,
        )
        lst = api.post("/v1/contact-lists", json={"name": "all"}).json()
        for i in range(3):
            phone = "+15005550001" if i == 0 else f"+1415555{i:04d}"  # +15005550001: rejected
            r = api.post("/v1/contacts", json={"name": f"P {i}", "phone": phone, "lists": [lst["id"]]})
            assert r.status_code == 201, r.text
        campaign = {
            "name": "Every 15 s",
            "channel": "sms",
            "contact_list_id": lst["id"],
            "sender_id": "SHOP",
            "body": "Hi {{first_name}}",
        }
        r = api.post(
            "/v1/schedules", json={"name": "often", "interval_seconds": INTERVAL_S, "campaign": campaign}
        )
        assert r.status_code == 201, r.text
        schedule = r.json()
        sid = schedule["id"]
        assert schedule["active"] and schedule["next_run_at"]

        # It lives in Prefect: a schedule of launch-campaign/default, slug = our id, the campaign
        # (plus account and schedule ids) as its parameters.
        held = prefect.schedules()[sid]
        assert held["active"] is True and held["schedule"]["interval"] == INTERVAL_S
        assert held["parameters"] == {"account_id": account["account_id"], "schedule_id": sid, **campaign}

        def created() -> list[dict[str, Any]]:
            return list(api.get(f"/v1/campaigns?schedule_id={sid}&per_page=100").json()["data"])

        first = wait_for(
            created, lambda cs: any(c["status"] == "completed" for c in cs), 150, "a first firing"
        )
        done = next(c for c in first if c["status"] == "completed")
        assert (done["total_recipients"], done["delivered_count"], done["failed_count"]) == (3, 2, 1)
        assert done["schedule_id"] == sid and done["name"] == "Every 15 s"

        # What the operator sees on the send-campaign run: name, tags, artifacts.
        run = prefect.run(done["flow_run_id"])
        assert run["name"] == f"{done['id']} · Every 15 s"
        assert {f"account:{account['account_id']}", "channel:sms", f"schedule:{sid}"} <= set(run["tags"])
        artifacts = prefect.artifacts(done["flow_run_id"])
        assert {"progress", "report", "summary"} <= set(artifacts)
        assert float(artifacts["progress"]["data"]) == 100.0
        report = artifacts["report"]["data"]
        assert "**Status:** completed" in report and f"**Schedule:** {sid}" in report
        assert "| delivered | 2 |" in report and "| `invalid_recipient` | 1 |" in report
        summary = artifacts["summary"]["data"]
        rows = {
            row["metric"]: row["value"]
            for row in (json.loads(summary) if isinstance(summary, str) else summary)
        }
        assert rows["status"] == "completed" and rows["delivered"] == 2
        # The launch-campaign run that the schedule fired is tagged and named after it too.
        launches = prefect.runs_tagged(f"schedule:{sid}")
        launch_runs = [
            r for r in launches if r["id"] != done["flow_run_id"] and r["name"].startswith("launch ")
        ]
        assert launch_runs and all(r["name"].endswith(f"· {sid}") for r in launch_runs)

        # kill -9 of serve, its Prefect server, worker and flow processes; restart on the same data.
        kill_tree(proc)
        restarted_at = datetime.now(UTC)
        proc = start_serve(env, port, log)
        again = api.get(f"/v1/schedules/{sid}")
        assert again.status_code == 200, again.text
        assert {k: v for k, v in again.json().items() if k != "next_run_at"} == {
            k: v for k, v in schedule.items() if k != "next_run_at"
        }
        assert prefect.schedules()[sid]["parameters"] == held["parameters"]
        after = wait_for(
            created,
            lambda cs: any(_ts(c["created_at"]) > restarted_at and c["status"] == "completed" for c in cs),
            150,
            "a firing after the restart",
        )
        ids = [c["id"] for c in after]
        assert len(ids) == len(set(ids)) >= 2

        # Paused: active in Prefect too, and nothing more fires; deleted: gone from Prefect.
        r = api.post(f"/v1/schedules/{sid}/pause")
        assert r.status_code == 200, r.text
        paused = r.json()
        assert paused["active"] is False and paused["next_run_at"] is None
        assert prefect.schedules()[sid]["active"] is False
        time.sleep(5)  # a run already past its check when the pause landed may still create one
        count = len(created())
        time.sleep(2 * INTERVAL_S)
        assert len(created()) == count
        assert api.delete(f"/v1/schedules/{sid}").status_code == 204
        assert sid not in prefect.schedules()
        assert api.get(f"/v1/schedules/{sid}").status_code == 404
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
