"""Quiet hours through `campaigns serve` (SPEC §10): a campaign with a send window delivers at
once to the recipient inside hers, holds the other `pending` (campaign `processing`) while his
window is closed, survives a kill -9 of the whole serve tree meanwhile, and sends to him, once,
when his window opens. The zones are chosen at run time: his window opens about a minute after
the test starts, in his own time zone."""

from __future__ import annotations

import math
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployments.stack import free_port
from tests.e2e.serving import clean_env, cli_json, kill_tree, start_serve, wait_for

pytestmark = pytest.mark.e2e
LEAD_S = 50  # how long after the campaign starts his window opens


def plan_zones(now: datetime) -> tuple[str, str, dict[str, str]]:
    """(zone open now, zone opening in ~LEAD_S, window) from the fixed-offset zones: a zone
    whose clock is between 00:30 and 21:00 for him, and the zone one hour ahead for her."""
    for offset in range(-11, 13):  # Etc/GMT-N is UTC+N
        local = now + timedelta(hours=offset)
        if not (30 <= local.hour * 60 + local.minute <= 21 * 60):
            continue
        opens = local + timedelta(seconds=LEAD_S)
        start = opens.replace(second=0, microsecond=0) + timedelta(minutes=1 if opens.second else 0)
        end = start + timedelta(minutes=90)
        name = "UTC" if offset == 0 else f"Etc/GMT{-offset:+d}"
        ahead = offset + 1
        her = "UTC" if ahead == 0 else f"Etc/GMT{-ahead:+d}"
        return her, name, {"start": start.strftime("%H:%M"), "end": end.strftime("%H:%M")}
    raise AssertionError("no zone fits")  # unreachable: 24 offsets cover every hour


def test_a_send_window_holds_a_recipient_until_it_opens_even_across_a_crash(tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(
        CAMPAIGNS_DATA_DIR=str(tmp_path),
        CAMPAIGNS_PREFECT_PORT=str(free_port()),
        CAMPAIGNS_API__RATE_PER_SECOND="1000",
        CAMPAIGNS_API__BURST="1000",
        CAMPAIGNS_SANDBOX__DELIVERY_DELAY_S="0.2",
        CAMPAIGNS_DELIVERY__POLL_INTERVAL_S="0.5",
        CAMPAIGNS_RECONCILE_INTERVAL_S="2",
        CAMPAIGNS_STALE_AFTER_S="10",
    )
    log = tmp_path / "serve.log"
    serve = start_serve(env, port, log)
    try:
        account = cli_json(env, "accounts", "create", "quiet", "--credits", "100")
        cli_json(
            env,
            "sender-ids",
            "add",
            account["account_id"],
            "--channel",
            "sms",
            "--value",
            "QUIET",
            "--approved",
            "--json",
        )
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {account['api_key']}"},
            timeout=30,
        )
        her_zone, his_zone, window = plan_zones(datetime.now(UTC))
        lst = api.post("/v1/contact-lists", json={"name": "zones"}).json()["id"]
        her = api.post(
            "/v1/contacts",
            json={"name": "Her", "phone": "+14155550101", "timezone": her_zone, "lists": [lst]},
        ).json()
        him = api.post(
            "/v1/contacts",
            json={"name": "Him", "phone": "+14155550102", "timezone": his_zone, "lists": [lst]},
        ).json()
        assert (her["timezone"], him["timezone"]) == (her_zone, his_zone)
        created = api.post(
            "/v1/campaigns",
            json={
                "name": "quiet hours",
                "channel": "sms",
                "contact_list_id": lst,
                "sender_id": "QUIET",
                "body": "Hi {{first_name}}",
                "send_window": window,
            },
        )
        assert created.status_code == 201, created.text
        cid = created.json()["id"]
        assert created.json()["send_window"] == window

        def messages() -> dict[str, dict[str, Any]]:
            rows = api.get(f"/v1/campaigns/{cid}/messages").json()["data"]
            return {m["contact_id"]: m for m in rows}

        wait_for(
            messages, lambda m: len(m) == 2 and m[her["id"]]["status"] == "delivered", 60, "her delivery"
        )
        time.sleep(2)
        held = messages()[him["id"]]
        campaign = api.get(f"/v1/campaigns/{cid}").json()
        assert held["status"] == "pending" and held["attempts"] == 0, held
        assert campaign["status"] == "processing" and campaign["pending_count"] == 1, campaign

        # The machine dies while the campaign waits; it comes back on the same data directory.
        kill_tree(serve)
        serve = start_serve(env, port, log)
        opens_in = _seconds_until(window["start"], his_zone)
        if opens_in > 5:
            assert messages()[him["id"]]["status"] == "pending"
        final = wait_for(
            lambda: api.get(f"/v1/campaigns/{cid}").json(),
            lambda c: c["status"] == "completed",
            opens_in + 120,
            "completion after the window opened",
            every=1,
        )
        his = messages()[him["id"]]
        assert his["status"] == "delivered" and his["attempts"] == 1, his
        sent_at = datetime.fromisoformat(his["sent_at"].replace("Z", "+00:00"))
        assert sent_at >= _opening(window["start"], his_zone), (his, window, his_zone)
        assert final["delivered_count"] == 2 and api.get("/v1/credits").json()["reserved"] == 0
        api.close()
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(timeout=60)
        except Exception:
            kill_tree(serve)


def _opening(start: str, zone: str) -> datetime:
    """Today's (or the coming) opening of `start` in a fixed-offset zone, as aware UTC."""
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(zone)
    local_now = datetime.now(tz)
    hours, minutes = (int(x) for x in start.split(":"))
    opening = local_now.replace(hour=hours, minute=minutes, second=0, microsecond=0)
    if opening < local_now - timedelta(hours=12):
        opening += timedelta(days=1)
    return opening.astimezone(UTC)


def _seconds_until(start: str, zone: str) -> float:
    return max(0.0, math.ceil((_opening(start, zone) - datetime.now(UTC)).total_seconds()))
