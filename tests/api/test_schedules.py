"""Recurring campaigns over HTTP (SPEC §8) against an in-memory scheduler (no Prefect here):
the real one is exercised through `campaigns serve` in tests/e2e/test_schedules.py."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from core import launches, schedules
from core.db import session_scope
from core.schedules import Planned, Timing
from models.schemas import CampaignCreate
from tests.api.test_campaigns import assert_error
from tests.conftest import MemoryScheduler
from tests.factories import Tenant, make_tenant


@pytest.fixture
def tenant(engine: Engine) -> Tenant:
    return make_tenant(engine, credits_amount=100, contacts_n=3)


def campaign(tenant: Tenant, **over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "Monday promo",
        "channel": "sms",
        "contact_list_id": tenant.list_id,
        "sender_id": tenant.sender,
        "body": "Hi {{first_name}}",
    }
    data.update(over)
    return {k: v for k, v in data.items() if v is not None}


def schedule(tenant: Tenant, **over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"name": "Mondays", "cron": "0 9 * * 1", "campaign": campaign(tenant)}
    data.update(over)
    return {k: v for k, v in data.items() if v is not None}


def test_create_a_cron_schedule(client: TestClient, tenant: Tenant, scheduler: MemoryScheduler) -> None:
    r = client.post(
        "/v1/schedules", json=schedule(tenant, timezone="America/New_York"), headers=tenant.headers
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["id"].startswith("sch_") and len(body["id"]) >= 4 + 24
    assert body["name"] == "Mondays"
    assert (body["cron"], body["interval_seconds"], body["timezone"]) == (
        "0 9 * * 1",
        None,
        "America/New_York",
    )
    assert body["active"] is True
    assert body["created_at"].endswith("Z")
    when = datetime.fromisoformat(body["next_run_at"].replace("Z", "+00:00"))
    assert when > datetime.now(UTC) and when.weekday() == 0
    assert when.hour in (13, 14)  # 09:00 in New York is 13:00 or 14:00 UTC (DST)
    assert body["campaign"] == {
        "name": "Monday promo",
        "channel": "sms",
        "contact_list_id": tenant.list_id,
        "sender_id": tenant.sender,
        "body": "Hi {{first_name}}",
        "template": None,
        "subject": None,
        "html": None,
        "send_window": None,
    }
    # What Prefect holds: the launch-campaign parameters, keyed by our id (the slug).
    held = scheduler.schedules[body["id"]]
    assert held.active and held.timing.cron == "0 9 * * 1"
    assert held.parameters == {
        "account_id": tenant.account_id,
        "schedule_id": body["id"],
        "name": "Monday promo",
        "channel": "sms",
        "contact_list_id": tenant.list_id,
        "sender_id": tenant.sender,
        "body": "Hi {{first_name}}",
    }
    assert client.get(f"/v1/schedules/{body['id']}", headers=tenant.headers).json() == body


def test_create_an_interval_schedule(client: TestClient, tenant: Tenant) -> None:
    r = client.post(
        "/v1/schedules", json=schedule(tenant, cron=None, interval_seconds=3600), headers=tenant.headers
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["cron"], body["interval_seconds"], body["timezone"]) == (None, 3600, "UTC")
    explicit_null = schedule(tenant)
    explicit_null["timezone"] = None
    r = client.post("/v1/schedules", json=explicit_null, headers=tenant.headers)
    assert r.status_code == 201 and r.json()["timezone"] == "UTC"
    when = datetime.fromisoformat(body["next_run_at"].replace("Z", "+00:00"))
    assert 0 < (when - datetime.now(UTC)).total_seconds() <= 3601


@pytest.mark.parametrize(
    ("over", "why"),
    [
        ({"cron": None}, "neither cron nor interval"),
        ({"interval_seconds": 60}, "both cron and interval"),
        ({"cron": None, "interval_seconds": 0}, "interval not positive"),
        ({"cron": None, "interval_seconds": "60"}, "interval not an integer"),
        ({"name": None}, "no name"),
        ({"name": "x" * 201}, "name too long"),
        ({"campaign": None}, "no campaign"),
        ({"timezone": 5}, "timezone not a string"),
    ],
)
def test_schema_errors_are_400(
    client: TestClient, tenant: Tenant, scheduler: MemoryScheduler, over: dict[str, Any], why: str
) -> None:
    data = schedule(tenant, **over)
    if over.get("campaign", 1) is None:
        data.pop("campaign", None)
    assert_error(client.post("/v1/schedules", json=data, headers=tenant.headers), 400, "invalid_request")
    assert scheduler.schedules == {}


def test_the_campaign_may_not_carry_scheduled_at(client: TestClient, tenant: Tenant) -> None:
    data = schedule(tenant, campaign=campaign(tenant, scheduled_at="2030-01-01T00:00:00Z"))
    payload = assert_error(
        client.post("/v1/schedules", json=data, headers=tenant.headers), 400, "invalid_request"
    )
    assert "scheduled_at" in payload["message"]


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"timezone": "../etc/passwd"}, "timezone"),
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * *"}, "cron"),
        ({"cron": "H * * * *"}, "cron"),
        ({"cron": "0 9 * * 1 2026"}, "cron"),
    ],
)
def test_bad_timing_is_422(
    client: TestClient, tenant: Tenant, scheduler: MemoryScheduler, over: dict[str, Any], field: str
) -> None:
    r = client.post("/v1/schedules", json=schedule(tenant, **over), headers=tenant.headers)
    assert assert_error(r, 422, "validation_error")["details"]["field"] == field
    assert scheduler.schedules == {}


@pytest.mark.parametrize(
    ("over", "status", "code"),
    [
        ({"contact_list_id": "lst_nope"}, 404, "not_found"),
        ({"sender_id": "NOTMINE"}, 422, "validation_error"),
        ({"body": None}, 422, "validation_error"),
        ({"template": {"name": "t", "language": "en"}}, 422, "validation_error"),
        ({"body": "Hi {{nickname}}"}, 422, "validation_error"),
        ({"body": "x" * 2000}, 422, "validation_error"),
    ],
)
def test_the_campaign_is_checked_as_on_create(
    client: TestClient,
    tenant: Tenant,
    scheduler: MemoryScheduler,
    over: dict[str, Any],
    status: int,
    code: str,
) -> None:
    data = schedule(tenant, campaign=campaign(tenant, **over))
    if "body" in over and over["body"] is None:
        data["campaign"].pop("body", None)
    assert_error(client.post("/v1/schedules", json=data, headers=tenant.headers), status, code)
    assert scheduler.schedules == {}
    assert client.get("/v1/schedules", headers=tenant.headers).json()["meta"]["total"] == 0


def test_credits_are_not_checked_at_create(client: TestClient, engine: Engine) -> None:
    poor = make_tenant(engine, credits_amount=0, name="poor")
    assert client.post("/v1/schedules", json=schedule(poor), headers=poor.headers).status_code == 201


def test_authentication_and_ownership(client: TestClient, tenant: Tenant, engine: Engine) -> None:
    assert_error(client.post("/v1/schedules", json=schedule(tenant)), 401, "unauthorized")
    assert_error(client.get("/v1/schedules"), 401, "unauthorized")
    sid = client.post("/v1/schedules", json=schedule(tenant), headers=tenant.headers).json()["id"]
    other = make_tenant(engine, name="other", phone_base=14155560000)
    for method, path in [
        ("GET", f"/v1/schedules/{sid}"),
        ("DELETE", f"/v1/schedules/{sid}"),
        ("POST", f"/v1/schedules/{sid}/pause"),
        ("POST", f"/v1/schedules/{sid}/resume"),
    ]:
        assert_error(client.request(method, path, headers=other.headers), 404, "not_found")
    assert client.get("/v1/schedules", headers=other.headers).json()["meta"]["total"] == 0
    assert client.get(f"/v1/schedules/{sid}", headers=tenant.headers).status_code == 200


def test_pause_resume_delete(client: TestClient, tenant: Tenant, scheduler: MemoryScheduler) -> None:
    sid = client.post("/v1/schedules", json=schedule(tenant), headers=tenant.headers).json()["id"]
    paused = client.post(f"/v1/schedules/{sid}/pause", headers=tenant.headers)
    assert paused.status_code == 200, paused.text
    assert paused.json()["active"] is False and paused.json()["next_run_at"] is None
    assert scheduler.schedules[sid].active is False
    resumed = client.post(f"/v1/schedules/{sid}/resume", headers=tenant.headers).json()
    assert resumed["active"] is True and resumed["next_run_at"] is not None
    r = client.delete(f"/v1/schedules/{sid}", headers=tenant.headers)
    assert r.status_code == 204 and r.content == b""
    assert sid not in scheduler.schedules
    assert_error(client.get(f"/v1/schedules/{sid}", headers=tenant.headers), 404, "not_found")
    assert_error(client.delete(f"/v1/schedules/{sid}", headers=tenant.headers), 404, "not_found")


def test_paused_in_the_prefect_ui_shows_here(
    client: TestClient, tenant: Tenant, scheduler: MemoryScheduler
) -> None:
    sid = client.post("/v1/schedules", json=schedule(tenant), headers=tenant.headers).json()["id"]
    scheduler.schedules[sid] = schedules.with_active(scheduler.schedules[sid], False)
    assert client.get(f"/v1/schedules/{sid}", headers=tenant.headers).json()["active"] is False


def test_list_newest_first_paginated(client: TestClient, tenant: Tenant, scheduler: MemoryScheduler) -> None:
    ids = [
        client.post("/v1/schedules", json=schedule(tenant, name=f"s{i}"), headers=tenant.headers).json()["id"]
        for i in range(3)
    ]
    page = client.get("/v1/schedules?per_page=2", headers=tenant.headers).json()
    assert page["meta"] == {"page": 1, "per_page": 2, "total": 3}
    rest = client.get("/v1/schedules?per_page=2&page=2", headers=tenant.headers).json()
    assert [s["id"] for s in page["data"] + rest["data"]] == ids[::-1]
    # Deleted in the Prefect UI: gone here too.
    del scheduler.schedules[ids[0]]
    assert client.get("/v1/schedules", headers=tenant.headers).json()["meta"]["total"] == 2
    assert_error(client.get(f"/v1/schedules/{ids[0]}", headers=tenant.headers), 404, "not_found")
    assert_error(client.get("/v1/schedules?per_page=101", headers=tenant.headers), 400, "invalid_request")


def test_a_prefect_schedule_without_a_row_is_removed(
    client: TestClient, tenant: Tenant, scheduler: MemoryScheduler
) -> None:
    """A create whose answer from Prefect was lost left a schedule there and none here."""
    orphan = Planned("sch_orphan", Timing("0 9 * * *", None, "UTC"), True, {"account_id": tenant.account_id})
    scheduler.schedules[orphan.slug] = orphan
    assert client.get("/v1/schedules", headers=tenant.headers).json()["meta"]["total"] == 0
    assert "sch_orphan" not in scheduler.schedules


def test_prefect_down_is_503_and_changes_nothing(
    client: TestClient, tenant: Tenant, scheduler: MemoryScheduler
) -> None:
    scheduler.down = True
    r = client.post("/v1/schedules", json=schedule(tenant), headers=tenant.headers)
    assert_error(r, 503, "service_unavailable")
    assert int(r.headers["Retry-After"]) >= 1
    assert_error(client.get("/v1/schedules", headers=tenant.headers), 503, "service_unavailable")
    scheduler.down = False
    assert client.get("/v1/schedules", headers=tenant.headers).json()["meta"]["total"] == 0


def test_without_prefect_schedules_are_503(settings: Any, engine: Engine, tenant: Tenant) -> None:
    from api.app import create_app

    with TestClient(create_app(settings, engine=engine), raise_server_exceptions=False) as c:
        assert_error(
            c.post("/v1/schedules", json=schedule(tenant), headers=tenant.headers), 503, "service_unavailable"
        )


# -- what each firing does (core.launches, called by the launch-campaign flow) --


def _fire(engine: Engine, tenant: Tenant, schedule_id: str | None, run_key: str) -> launches.Launched | None:
    return launches.create_for_run(
        engine,
        account_id=tenant.account_id,
        data=CampaignCreate.model_validate(campaign(tenant)),
        schedule_id=schedule_id,
        run_key=run_key,
    )


def test_each_firing_creates_one_campaign_listed_by_schedule(
    client: TestClient, engine: Engine, tenant: Tenant
) -> None:
    sid = client.post("/v1/schedules", json=schedule(tenant), headers=tenant.headers).json()["id"]
    first = _fire(engine, tenant, sid, "run-1")
    assert first is not None and first.created_now and first.status == "draft"
    again = _fire(engine, tenant, sid, "run-1")  # the same run restarted: the same campaign
    assert again is not None and again.campaign_id == first.campaign_id and not again.created_now
    later = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=5)
    restarted = launches.create_for_run(  # restarted after its fire time passed: still the same
        engine,
        account_id=tenant.account_id,
        data=CampaignCreate.model_validate({**campaign(tenant), "scheduled_at": later.isoformat()}),
        schedule_id=sid,
        run_key="run-1",
    )
    assert restarted is not None and restarted.campaign_id == first.campaign_id
    second = _fire(engine, tenant, sid, "run-2")
    assert second is not None and second.campaign_id != first.campaign_id
    other = _fire(engine, tenant, None, "run-3")  # launched from the form, not by the schedule
    assert other is not None
    listed = client.get(f"/v1/campaigns?schedule_id={sid}", headers=tenant.headers).json()
    assert [c["id"] for c in listed["data"]] == [second.campaign_id, first.campaign_id]
    assert all(c["schedule_id"] == sid for c in listed["data"])
    assert client.get("/v1/campaigns", headers=tenant.headers).json()["meta"]["total"] == 3
    assert client.get("/v1/credits", headers=tenant.headers).json()["reserved"] == 9


def test_a_firing_without_credits_creates_a_failed_campaign(client: TestClient, engine: Engine) -> None:
    poor = make_tenant(engine, credits_amount=2, name="poor")  # 3 recipients, 2 credits
    sid = client.post("/v1/schedules", json=schedule(poor), headers=poor.headers).json()["id"]
    launched = _fire(engine, poor, sid, "run-1")
    assert launched is not None and launched.status == "failed"
    body = client.get(f"/v1/campaigns/{launched.campaign_id}", headers=poor.headers).json()
    assert body["status"] == "failed" and body["failure_reason"] == "insufficient_credits"
    assert body["schedule_id"] == sid and body["credits_reserved"] == 0
    assert client.get("/v1/credits", headers=poor.headers).json() == {
        "balance": 2,
        "reserved": 0,
        "available": 2,
    }
    assert _fire(engine, poor, sid, "run-1").campaign_id == launched.campaign_id  # type: ignore[union-attr]


def test_a_firing_of_a_deleted_schedule_creates_nothing(
    client: TestClient, engine: Engine, tenant: Tenant
) -> None:
    sid = client.post("/v1/schedules", json=schedule(tenant), headers=tenant.headers).json()["id"]
    assert client.delete(f"/v1/schedules/{sid}", headers=tenant.headers).status_code == 204
    assert _fire(engine, tenant, sid, "run-1") is None
    assert client.get("/v1/campaigns", headers=tenant.headers).json()["meta"]["total"] == 0
    with session_scope(engine) as session:
        assert not schedules.exists(session, schedule_id=sid)


def test_parameters_emptied_in_prefect_are_shown_and_restored_from_our_copy(
    client: TestClient, tenant: Tenant, scheduler: MemoryScheduler
) -> None:
    """Prefect 3.9 empties a schedule's parameters when the UI's toggle updates it."""
    created = client.post("/v1/schedules", json=schedule(tenant), headers=tenant.headers).json()
    sid = created["id"]
    kept = scheduler.schedules[sid].parameters
    scheduler.schedules[sid] = dataclasses.replace(scheduler.schedules[sid], parameters={}, active=False)
    shown = client.get(f"/v1/schedules/{sid}", headers=tenant.headers).json()
    assert shown["campaign"] == created["campaign"] and shown["active"] is False
    resumed = client.post(f"/v1/schedules/{sid}/resume", headers=tenant.headers).json()
    assert resumed["active"] is True and scheduler.schedules[sid].parameters == kept


def test_sync_restores_emptied_parameters_and_takes_edits(engine: Engine, tenant: Tenant) -> None:
    params = {"account_id": tenant.account_id, "schedule_id": "sch_a", **campaign(tenant)}
    timing = Timing("0 9 * * *", None, "UTC")
    with session_scope(engine) as session:
        for sid in ("sch_a", "sch_b"):
            schedules.insert(
                session, schedule_id=sid, account_id=tenant.account_id, name=sid, parameters=params
            )
    edited = {**params, "body": "Edited in the UI"}
    planned = {
        "sch_a": Planned("sch_a", timing, True, {}),
        "sch_b": Planned("sch_b", timing, True, edited),
        "sch_c": Planned("sch_c", timing, True, params),
    }
    with session_scope(engine) as session:
        plan = schedules.sync(session, planned)
    assert plan.restore == {"sch_a": params} and plan.orphans == {"sch_c"}
    with session_scope(engine) as session:
        assert schedules.rows_by_id(session, {"sch_b"})["sch_b"].parameters == edited


def test_an_account_has_at_most_max_schedules(settings: Any, engine: Engine, tenant: Tenant) -> None:
    from api.app import create_app

    capped = settings.model_copy(update={"api": settings.api.model_copy(update={"max_schedules": 2})})
    scheduler = MemoryScheduler()
    with TestClient(
        create_app(capped, scheduler=scheduler, engine=engine), raise_server_exceptions=False
    ) as c:
        for _ in range(2):
            assert c.post("/v1/schedules", json=schedule(tenant), headers=tenant.headers).status_code == 201
        r = c.post("/v1/schedules", json=schedule(tenant), headers=tenant.headers)
        assert_error(r, 429, "rate_limit_exceeded")
        assert int(r.headers["Retry-After"]) >= 1 and len(scheduler.schedules) == 2
