"""Campaign control over HTTP (SPEC §7): pause, resume, edit and reschedule, retry failed only.
TestClient with a recording launcher; no Prefect."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, update

from core.db import session_scope
from models import Campaign, Contact, Message
from tests.api.test_campaigns import assert_error, body, credits_of
from tests.conftest import RecordingLauncher
from tests.factories import Tenant, make_tenant, start_campaign


@pytest.fixture
def tenant(engine: Engine) -> Tenant:
    return make_tenant(engine, credits_amount=100, contacts_n=3)


def _create(client: TestClient, tenant: Tenant, **over: Any) -> dict[str, Any]:
    r = client.post("/v1/campaigns", json=body(tenant, **over), headers=tenant.headers)
    assert r.status_code == 201, r.text
    return r.json()


def _later(minutes: int = 60) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _set(engine: Engine, cid: str, **values: Any) -> None:
    with session_scope(engine) as session:
        session.execute(update(Campaign).where(Campaign.id == cid).values(**values))


# -- pause / resume --


def test_pause_and_resume_a_scheduled_campaign(
    client: TestClient, tenant: Tenant, launcher: RecordingLauncher
) -> None:
    c = _create(client, tenant, scheduled_at=_later())
    r = client.post(f"/v1/campaigns/{c['id']}/pause", headers=tenant.headers)
    assert r.status_code == 200, r.text
    paused = r.json()
    assert paused["status"] == "paused" and paused["paused_at"].endswith("Z")
    assert launcher.paused == [f"fr-{c['id']}"]  # the run shows Suspended in Prefect
    assert credits_of(client, tenant)["reserved"] == 3  # credits stay held
    again = client.post(f"/v1/campaigns/{c['id']}/pause", headers=tenant.headers)
    assert again.status_code == 200 and again.json()["paused_at"] == paused["paused_at"]  # no change
    r = client.post(f"/v1/campaigns/{c['id']}/resume", headers=tenant.headers)
    assert r.status_code == 200 and r.json()["status"] == "scheduled"  # its time is still ahead
    assert r.json()["paused_at"] is None
    assert launcher.resumed and launcher.resumed[0][0] == f"fr-{c['id']}"
    assert_error(client.post(f"/v1/campaigns/{c['id']}/resume", headers=tenant.headers), 409, "conflict")


def test_resume_starts_a_new_run_when_prefect_will_not_resume_the_old_one(
    client: TestClient, tenant: Tenant, launcher: RecordingLauncher, engine: Engine
) -> None:
    c = _create(client, tenant)
    start_campaign(engine, c["id"])
    assert client.post(f"/v1/campaigns/{c['id']}/pause", headers=tenant.headers).json()["status"] == "paused"
    launcher.resumable = False  # e.g. a Suspend from the UI whose timeout ran out
    r = client.post(f"/v1/campaigns/{c['id']}/resume", headers=tenant.headers)
    assert r.status_code == 200 and r.json()["status"] == "processing"
    assert launcher.launched[-1]["key"] == f"{c['id']}:resume-1"
    assert r.json()["flow_run_id"] == f"fr-{c['id']}:resume-1"


@pytest.mark.parametrize("status", ["sent", "completed", "failed", "cancelled"])
def test_pause_is_a_conflict_outside_the_table(
    client: TestClient, tenant: Tenant, engine: Engine, status: str
) -> None:
    c = _create(client, tenant)
    _set(engine, c["id"], status=status)
    assert_error(client.post(f"/v1/campaigns/{c['id']}/pause", headers=tenant.headers), 409, "conflict")
    assert_error(client.post(f"/v1/campaigns/{c['id']}/resume", headers=tenant.headers), 409, "conflict")


def test_control_of_another_accounts_campaign_is_not_found(
    client: TestClient, tenant: Tenant, engine: Engine
) -> None:
    other = make_tenant(engine, name="other", phone_base=14165550000)
    c = _create(client, tenant)
    for action in ("pause", "resume", "cancel", "retry"):
        assert_error(
            client.post(f"/v1/campaigns/{c['id']}/{action}", headers=other.headers), 404, "not_found"
        )
    assert_error(
        client.patch(f"/v1/campaigns/{c['id']}", json={"name": "x"}, headers=other.headers), 404, "not_found"
    )


def test_cancel_of_a_paused_campaign_releases_everything(
    client: TestClient, tenant: Tenant, engine: Engine
) -> None:
    c = _create(client, tenant)
    start_campaign(engine, c["id"])
    client.post(f"/v1/campaigns/{c['id']}/pause", headers=tenant.headers)
    r = client.post(f"/v1/campaigns/{c['id']}/cancel", headers=tenant.headers)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert credits_of(client, tenant) == {"balance": 100, "reserved": 0, "available": 100}
    messages = client.get(f"/v1/campaigns/{c['id']}/messages", headers=tenant.headers).json()["data"]
    assert {(m["status"], m["error_code"]) for m in messages} == {("failed", "cancelled")}


# -- edit and reschedule --


def test_edit_reprices_and_moves_the_hold(
    client: TestClient, tenant: Tenant, launcher: RecordingLauncher
) -> None:
    c = _create(client, tenant, body="short")
    assert credits_of(client, tenant)["reserved"] == 3
    r = client.patch(
        f"/v1/campaigns/{c['id']}", json={"body": "x" * 200, "name": "Renamed"}, headers=tenant.headers
    )
    assert r.status_code == 200, r.text
    assert (r.json()["name"], r.json()["body"], r.json()["credits_reserved"]) == ("Renamed", "x" * 200, 6)
    assert credits_of(client, tenant)["reserved"] == 6  # 2 segments each now
    assert launcher.rescheduled == []  # the time did not change


def test_edit_that_costs_too_much_changes_nothing(client: TestClient, engine: Engine) -> None:
    tenant = make_tenant(engine, credits_amount=4, contacts_n=3, name="tight")
    c = _create(client, tenant, body="short")
    r = client.patch(f"/v1/campaigns/{c['id']}", json={"body": "x" * 200}, headers=tenant.headers)
    assert_error(r, 422, "insufficient_credits")
    got = client.get(f"/v1/campaigns/{c['id']}", headers=tenant.headers).json()
    assert got["body"] == "short" and got["credits_reserved"] == 3
    assert credits_of(client, tenant)["reserved"] == 3


def test_edit_validates_like_create(client: TestClient, tenant: Tenant) -> None:
    c = _create(client, tenant)
    cases = [
        ({"name": ""}, 400, "invalid_request"),
        ({"name": None}, 400, "invalid_request"),
        ({"name": "x" * 201}, 400, "invalid_request"),
        ({"scheduled_at": "tomorrow"}, 400, "invalid_request"),
        ({"body": 5}, 400, "invalid_request"),
        ({"body": "Hi {{nope}}"}, 422, "validation_error"),
        ({"body": "x" * 2000}, 422, "validation_error"),
        ({"scheduled_at": "2020-01-01T00:00:00Z"}, 422, "validation_error"),
        ({"template": {"name": "t", "language": "en"}}, 422, "validation_error"),  # sms
        ({"body": None}, 422, "validation_error"),  # neither body nor template
    ]
    for patch, status, code in cases:
        assert_error(
            client.patch(f"/v1/campaigns/{c['id']}", json=patch, headers=tenant.headers), status, code
        )
    assert (
        client.get(f"/v1/campaigns/{c['id']}", headers=tenant.headers).json()["body"] == "Hi {{first_name}}"
    )


def test_reschedule_moves_the_flow_run(
    client: TestClient, tenant: Tenant, launcher: RecordingLauncher
) -> None:
    c = _create(client, tenant, scheduled_at=_later(60))
    later = _later(120)
    r = client.patch(f"/v1/campaigns/{c['id']}", json={"scheduled_at": later}, headers=tenant.headers)
    assert r.status_code == 200 and r.json()["scheduled_at"] == later and r.json()["status"] == "scheduled"
    r = client.patch(f"/v1/campaigns/{c['id']}", json={"scheduled_at": None}, headers=tenant.headers)
    assert r.status_code == 200 and (r.json()["scheduled_at"], r.json()["status"]) == (None, "draft")
    assert [when is None for _run, when in launcher.rescheduled] == [False, True]


def test_edit_outside_draft_and_scheduled_is_a_conflict(
    client: TestClient, tenant: Tenant, engine: Engine
) -> None:
    c = _create(client, tenant)
    start_campaign(engine, c["id"])
    assert_error(
        client.patch(f"/v1/campaigns/{c['id']}", json={"name": "x"}, headers=tenant.headers), 409, "conflict"
    )


# -- retry failed only --


def _finish(engine: Engine, cid: str, outcomes: list[tuple[str, str | None, bool]]) -> None:
    """End a campaign with these (status, error_code, retryable) per message, in seq order."""
    start_campaign(engine, cid)
    with session_scope(engine) as session:
        rows = session.query(Message).filter(Message.campaign_id == cid).order_by(Message.seq).all()
        for row, (status, code, retryable) in zip(rows, outcomes, strict=True):
            session.execute(
                update(Message)
                .where(Message.id == row.id)
                .values(status=status, error_code=code, retryable=retryable)
            )
        session.execute(update(Campaign).where(Campaign.id == cid).values(status="completed"))


def test_retry_sends_only_the_failures_another_try_may_pass(
    client: TestClient, engine: Engine, launcher: RecordingLauncher
) -> None:
    tenant = make_tenant(engine, credits_amount=100, contacts_n=5, name="retry")
    c = _create(client, tenant)
    _finish(
        engine,
        c["id"],
        [
            ("delivered", None, False),
            ("failed", "21211", False),  # invalid number: never retried by default
            ("failed", "503", True),  # outage past the retry window
            ("failed", "outcome_unknown", True),
            ("undelivered", "30003", False),
        ],
    )
    r = client.post(f"/v1/campaigns/{c['id']}/retry", headers=tenant.headers)
    assert r.status_code == 201, r.text
    retry = r.json()
    assert retry["retry_of"] == c["id"] and retry["name"] == f"{c['name']} (retry 1)"
    assert (retry["status"], retry["total_recipients"], retry["channel"]) == ("draft", 2, "sms")
    assert retry["body"] == c["body"] and retry["sender_id"] == c["sender_id"]
    assert launcher.launched[-1]["campaign_id"] == retry["id"]
    messages = client.get(f"/v1/campaigns/{retry['id']}/messages", headers=tenant.headers).json()["data"]
    original = client.get(f"/v1/campaigns/{c['id']}/messages?per_page=100", headers=tenant.headers).json()[
        "data"
    ]
    retried = {m["contact_id"] for m in original if m["error_code"] in ("503", "outcome_unknown")}
    assert {m["contact_id"] for m in messages} == retried and {m["status"] for m in messages} == {"pending"}
    # Picking codes explicitly; the original is unchanged.
    r = client.post(f"/v1/campaigns/{c['id']}/retry", json={"error_codes": ["30003"]}, headers=tenant.headers)
    assert r.status_code == 201 and r.json()["total_recipients"] == 1
    assert r.json()["name"] == f"{c['name']} (retry 2)"
    assert client.get(f"/v1/campaigns/{c['id']}", headers=tenant.headers).json()["status"] == "completed"


def test_retry_skips_contacts_that_opted_out_or_are_gone(client: TestClient, engine: Engine) -> None:
    tenant = make_tenant(engine, credits_amount=100, contacts_n=3, name="gone")
    c = _create(client, tenant)
    _finish(engine, c["id"], [("failed", "cancelled", True)] * 3)
    contacts = client.get("/v1/contacts", headers=tenant.headers).json()["data"]
    client.delete(f"/v1/contacts/{contacts[0]['id']}", headers=tenant.headers)
    with session_scope(engine) as session:
        session.execute(
            update(Contact).where(Contact.id == contacts[1]["id"]).values(unsubscribed_at=datetime.now(UTC))
        )
    r = client.post(f"/v1/campaigns/{c['id']}/retry", headers=tenant.headers)
    assert r.status_code == 201 and r.json()["total_recipients"] == 1


def test_retry_rules(client: TestClient, engine: Engine) -> None:
    tenant = make_tenant(engine, credits_amount=6, contacts_n=3, name="rules")
    c = _create(client, tenant)
    path = f"/v1/campaigns/{c['id']}/retry"
    assert_error(client.post(path, headers=tenant.headers), 409, "conflict")  # still draft
    _finish(
        engine, c["id"], [("delivered", None, False), ("failed", "21211", False), ("failed", "503", True)]
    )
    assert_error(
        client.post(path, json={"error_codes": ["nope"]}, headers=tenant.headers), 422, "validation_error"
    )
    assert_error(
        client.post(path, json={"error_codes": "503"}, headers=tenant.headers), 400, "invalid_request"
    )
    assert_error(client.post(path, json={"error_codes": []}, headers=tenant.headers), 400, "invalid_request")
    # Idempotency-Key as on create: same key and body → the same campaign, nothing new.
    key = {"Idempotency-Key": "retry-once", **tenant.headers}
    first = client.post(path, headers=key)
    again = client.post(path, headers=key)
    assert first.status_code == again.status_code == 201 and first.json()["id"] == again.json()["id"]
    assert_error(client.post(path, json={"error_codes": ["503"]}, headers=key), 409, "conflict")
    # 3 held by the original until it settled (it did not here), 1 by the retry: 2 left.
    assert credits_of(client, tenant)["available"] == 2
    _set(engine, c["id"], credits_reserved=0)
    with session_scope(engine) as session:  # use up the rest
        from models import Account

        session.execute(update(Account).where(Account.id == tenant.account_id).values(reserved=6))
    assert_error(client.post(path, headers=tenant.headers), 422, "insufficient_credits")
