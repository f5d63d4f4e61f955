"""The event webhook outbox (SPEC §9): rows written in the transaction of the change they report,
with the API's own objects, on every database the machine has."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, update

from api.serialize import campaign_out, message_out
from channels.base import OutboundMessage, PermanentSendError, StatusUpdate
from core import campaigns, counts, ledger, lifecycle, tracking, webhooks
from core.db import session_scope
from core.errors import Conflict
from core.sender import send_chunk
from core.settings import Settings
from core.timeutil import utcnow
from models import Campaign, Message, WebhookDelivery
from models.schemas import CampaignCreate
from tests.factories import Tenant, make_tenant, start_campaign
from tests.fakes import FakeChannel

STATUS = webhooks.EventType.campaign_status_changed
FAILED = webhooks.EventType.message_failed


def _tenant(engine: Engine, contacts_n: int = 3, events: list[str] | None = None) -> tuple[Tenant, str]:
    tenant = make_tenant(engine, contacts_n=contacts_n, credits_amount=10_000)
    with session_scope(engine) as session:
        endpoint = webhooks.create_endpoint(
            session,
            account_id=tenant.account_id,
            url="https://hooks.example.com/in",
            events=events or [STATUS, FAILED],
            allow_private=False,
        )
    return tenant, endpoint.id


def _campaign(engine: Engine, tenant: Tenant) -> str:
    with session_scope(engine) as session:
        return campaigns.create_campaign(
            session,
            account_id=tenant.account_id,
            data=CampaignCreate(
                name="x", channel="sms", contact_list_id=tenant.list_id, sender_id=tenant.sender, body="Hi"
            ),
        ).id


def _events(engine: Engine, campaign_id: str) -> list[dict[str, Any]]:
    with session_scope(engine) as session:
        rows = session.execute(
            select(WebhookDelivery)
            .where(WebhookDelivery.campaign_id == campaign_id)
            .order_by(WebhookDelivery.id)
        ).scalars()
        return [json.loads(r.payload) for r in rows]


def _statuses(engine: Engine, campaign_id: str) -> list[str]:
    return [e["data"]["campaign"]["status"] for e in _events(engine, campaign_id) if e["type"] == STATUS]


def test_a_transition_is_reported_in_its_own_transaction(db: Engine) -> None:
    tenant, endpoint_id = _tenant(db)
    cid = _campaign(db, tenant)
    with pytest.raises(RuntimeError), session_scope(db) as session:
        lifecycle.pause(session, campaign=lifecycle.load(session, cid))
        mine = select(func.count()).where(WebhookDelivery.campaign_id == cid)
        assert session.execute(mine).scalar_one() == 1
        raise RuntimeError("the change rolls back")
    assert _events(db, cid) == []  # ... and its event with it
    with session_scope(db) as session:
        lifecycle.pause(session, campaign=lifecycle.load(session, cid))
    [event] = _events(db, cid)
    assert event["type"] == "campaign.status_changed" and event["id"].startswith("evt_")
    assert event["created_at"].endswith("Z") and event["data"]["campaign"]["status"] == "paused"
    with session_scope(db) as session:
        row = session.execute(select(WebhookDelivery).where(WebhookDelivery.campaign_id == cid)).scalar_one()
        assert (row.endpoint_id, row.account_id, row.event_id) == (
            endpoint_id,
            tenant.account_id,
            event["id"],
        )
        assert row.attempts == 0 and row.delivered_at is None and row.failed_at is None


def test_a_lost_transition_is_not_reported(db: Engine) -> None:
    tenant, _ = _tenant(db)
    cid = _campaign(db, tenant)
    with session_scope(db) as session:
        assert lifecycle.dispatched(session, campaign_id=cid) is False  # a draft is not processing
        assert lifecycle.complete(session, campaign_id=cid) is False
    with pytest.raises(Conflict), session_scope(db) as session:
        lifecycle.resume(session, campaign=lifecycle.load(session, cid))  # not paused
    with session_scope(db) as session:  # the same pause twice: one change
        lifecycle.pause(session, campaign=lifecycle.load(session, cid))
        lifecycle.pause(session, campaign=lifecycle.load(session, cid))
    assert _statuses(db, cid) == ["paused"]


def test_every_status_change_of_a_run_in_order(db: Engine) -> None:
    tenant, _ = _tenant(db, contacts_n=2)
    cid = _campaign(db, tenant)
    start_campaign(db, cid)  # draft → processing
    with session_scope(db) as session:
        session.execute(update(Message).where(Message.campaign_id == cid).values(status="delivered"))
        assert lifecycle.dispatched(session, campaign_id=cid)
        assert lifecycle.complete(session, campaign_id=cid)
    assert _statuses(db, cid) == ["processing", "sent", "completed"]
    done = _events(db, cid)[-1]["data"]["campaign"]
    assert done["delivered_count"] == 2 and done["credits_used"] == 2  # settled before it is told


def test_an_edit_is_reported_only_when_the_status_changes(engine: Engine) -> None:
    tenant, _ = _tenant(engine)
    cid = _campaign(engine, tenant)
    with session_scope(engine) as session:
        assert lifecycle.edit(session, campaign=lifecycle.load(session, cid), values={"name": "y"})
    assert _statuses(engine, cid) == []  # draft → draft
    later = utcnow() + timedelta(hours=1)
    with session_scope(engine) as session:
        assert lifecycle.edit(session, campaign=lifecycle.load(session, cid), values={"scheduled_at": later})
    assert _statuses(engine, cid) == ["scheduled"]


def test_no_endpoint_no_row_and_the_payload_is_the_api_object(engine: Engine) -> None:
    lonely = make_tenant(engine, name="lonely", contacts_n=1)
    quiet = _campaign(engine, lonely)
    with session_scope(engine) as session:
        lifecycle.pause(session, campaign=lifecycle.load(session, quiet))
    assert _events(engine, quiet) == []

    tenant, _ = _tenant(engine)
    cid = _campaign(engine, tenant)
    start_campaign(engine, cid)
    with session_scope(engine) as session:
        lifecycle.pause(session, campaign=lifecycle.load(session, cid))
    event = _events(engine, cid)[-1]
    with session_scope(engine) as session:
        campaign = session.get(Campaign, cid)
        assert campaign is not None
        shown = campaign_out(campaign, counts.campaign_counts(session, [campaign])[cid])
    assert event["data"]["campaign"] == json.loads(json.dumps(shown))
    assert event["data"]["campaign"]["pending_count"] == 3


async def test_a_chunk_that_fails_many_messages_reports_each(settings: Settings, engine: Engine) -> None:
    tenant, _ = _tenant(engine, contacts_n=300)
    cid = _campaign(engine, tenant)
    start_campaign(engine, cid)

    def reject_odd(message: OutboundMessage, _attempt: int) -> None:
        if message.to.endswith(("1", "3", "5", "7", "9")):
            raise PermanentSendError("invalid number", code="21211")

    report = await send_chunk(
        settings=settings, engine=engine, campaign_id=cid, start=0, end=300, channel=FakeChannel(reject_odd)
    )
    assert report.failed == 150
    failures = [e for e in _events(engine, cid) if e["type"] == FAILED]
    assert len(failures) == 150 and len({e["id"] for e in failures}) == 150
    with session_scope(engine) as session:
        one = session.execute(
            select(Message).where(Message.id == failures[0]["data"]["message"]["id"])
        ).scalar_one()
        assert failures[0]["data"]["message"] == json.loads(json.dumps(message_out(one)))
    assert {e["data"]["message"]["error_code"] for e in failures} == {"21211"}
    assert failures[0]["data"]["campaign"]["id"] == cid


def test_receipts_timeouts_and_cancels_report_failures_once(db: Engine) -> None:
    tenant, _ = _tenant(db, contacts_n=4)
    cid = _campaign(db, tenant)
    start_campaign(db, cid)
    with session_scope(db) as session:
        ids = list(
            session.execute(
                select(Message.id).where(Message.campaign_id == cid).order_by(Message.seq)
            ).scalars()
        )
        for i, mid in enumerate(ids[:3]):
            session.execute(
                update(Message)
                .where(Message.id == mid)
                .values(status="sent", provider_message_id=f"{cid}-p{i}")
            )
    with session_scope(db) as session:
        tracking.apply_updates(
            session,
            [
                StatusUpdate(f"{cid}-p0", "delivered"),
                StatusUpdate(f"{cid}-p1", "undelivered", "30003", "unreachable"),
            ],
        )
        tracking.apply_updates(session, [StatusUpdate(f"{cid}-p1", "failed")])  # never backwards: no event
    with session_scope(db) as session:
        assert tracking.expire(session, campaign_id=cid) == 1  # p2: status_timeout
    with session_scope(db) as session:
        lifecycle.cancel(session, campaign=lifecycle.load(session, cid))  # the 4th: cancelled
    events = _events(db, cid)
    reported = [
        (e["data"]["message"]["id"], e["data"]["message"]["error_code"])
        for e in events
        if e["type"] == FAILED
    ]
    assert reported == [(ids[1], "30003"), (ids[2], "status_timeout"), (ids[3], "cancelled")]
    # The cancel is told before the messages it failed.
    assert [e["type"] for e in events][-2:] == [STATUS, FAILED]
    assert events[-2]["data"]["campaign"]["status"] == "cancelled"


def test_an_endpoint_gets_only_the_events_it_asked_for(engine: Engine) -> None:
    tenant, _ = _tenant(engine, events=[STATUS])
    cid = _campaign(engine, tenant)
    start_campaign(engine, cid)
    with session_scope(engine) as session:
        lifecycle.cancel(session, campaign=lifecycle.load(session, cid))
    assert [e["type"] for e in _events(engine, cid)] == [STATUS, STATUS]


def test_every_endpoint_gets_the_same_event(engine: Engine) -> None:
    tenant, first = _tenant(engine)
    with session_scope(engine) as session:
        second = webhooks.create_endpoint(
            session,
            account_id=tenant.account_id,
            url="https://b.example.com/",
            events=[STATUS],
            allow_private=False,
        ).id
    cid = _campaign(engine, tenant)
    start_campaign(engine, cid)
    with session_scope(engine) as session:
        rows = (
            session.execute(select(WebhookDelivery).where(WebhookDelivery.campaign_id == cid)).scalars().all()
        )
    assert {r.endpoint_id for r in rows} == {first, second}
    assert len({r.event_id for r in rows}) == 1 and len({r.payload for r in rows}) == 1


def test_a_deleted_endpoint_gives_up_what_it_had_pending(engine: Engine) -> None:
    tenant, endpoint_id = _tenant(engine)
    cid = _campaign(engine, tenant)
    start_campaign(engine, cid)
    with session_scope(engine) as session:
        webhooks.delete_endpoint(session, account_id=tenant.account_id, endpoint_id=endpoint_id)
    with session_scope(engine) as session:
        row = session.execute(select(WebhookDelivery).where(WebhookDelivery.campaign_id == cid)).scalar_one()
    assert row.failed_at is not None and row.last_error == "endpoint deleted"


def test_ledger_record_reports_only_the_rows_it_wrote(db: Engine) -> None:
    from core import attempts

    tenant, _ = _tenant(db, contacts_n=2)
    cid = _campaign(db, tenant)
    start_campaign(db, cid)
    with session_scope(db) as session:
        attempt = attempts.begin_attempt(session, campaign_id=cid, start=0, end=2, flow_run_id=None)
    with session_scope(db) as session:
        rows = ledger.claim(
            session, attempt_id=attempt, campaign_id=cid, start=0, end=2, limit=2, channel="sms"
        )
        assert rows is not None and len(rows) == 2
    gone, kept = rows
    with session_scope(db) as session:  # another attempt took one of them meanwhile
        session.execute(update(Message).where(Message.id == gone["id"]).values(claim_token="att_other"))
    with session_scope(db) as session:
        ledger.record(
            session,
            attempt_id=attempt,
            channel="sms",
            outcomes=[
                ledger.Outcome(r["id"], r["contact_id"], "failed", error_code="21211") for r in (gone, kept)
            ],
        )
    assert [e["data"]["message"]["id"] for e in _events(db, cid) if e["type"] == FAILED] == [kept["id"]]
