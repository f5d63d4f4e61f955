"""Credits and the message ledger on every database the machine has (SQLite, PostgreSQL)."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import Engine

from core import campaigns, credits, lifecycle
from core.db import session_scope
from core.errors import InsufficientCredits
from models.schemas import CampaignCreate
from tests.factories import make_tenant, start_campaign


def _create(engine: Engine, tenant, body: str = "Hello {{first_name}}") -> str:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        return campaigns.create_campaign(
            session,
            account_id=tenant.account_id,
            data=CampaignCreate(
                name="x", channel="sms", contact_list_id=tenant.list_id, sender_id=tenant.sender, body=body
            ),
        ).id


def _balance(engine: Engine, account_id: str) -> credits.Balance:
    with session_scope(engine) as session:
        return credits.get_balance(session, account_id)


def test_create_holds_cost_and_settle_charges_accepted(db: Engine) -> None:
    tenant = make_tenant(db, credits_amount=100, contacts_n=4)
    cid = _create(db, tenant)
    assert _balance(db, tenant.account_id).reserved == 4
    start_campaign(db, cid)
    assert _balance(db, tenant.account_id).reserved == 4
    with session_scope(db) as session:
        from sqlalchemy import update

        from models import Message

        rows = campaigns.list_messages(
            session, account_id=tenant.account_id, campaign_id=cid, status=None, page=1, per_page=10
        )[0]
        # Three accepted (one still awaiting its receipt), one rejected.
        for m, status in zip(rows, ["delivered", "undelivered", "sent", "failed"], strict=True):
            session.execute(update(Message).where(Message.id == m.id).values(status=status))
        lifecycle.fail(session, campaign_id=cid, reason="test")
    bal = _balance(db, tenant.account_id)
    assert (bal.balance, bal.reserved) == (97, 0)
    with session_scope(db) as session:
        assert credits.settle(session, campaign_id=cid) is False  # exactly once
    assert _balance(db, tenant.account_id).balance == 97


def test_segment_pricing_uses_the_personalized_body(db: Engine) -> None:
    tenant = make_tenant(db, credits_amount=100, contacts_n=2)
    # 150 chars + "Customer" (8) = 158 → 1 segment; with first_name doubled → 2 segments.
    _create(db, tenant, body="x" * 150 + "{{first_name}}")
    assert _balance(db, tenant.account_id).reserved == 2
    _create(db, tenant, body="x" * 150 + "{{first_name}}{{first_name}}")
    assert _balance(db, tenant.account_id).reserved == 2 + 4


def test_insufficient_credits_changes_nothing(db: Engine) -> None:
    tenant = make_tenant(db, credits_amount=2, contacts_n=3)
    with pytest.raises(InsufficientCredits):
        _create(db, tenant)
    bal = _balance(db, tenant.account_id)
    assert (bal.balance, bal.reserved) == (2, 0)
    with session_scope(db) as session:
        assert campaigns.list_campaigns(session, account_id=tenant.account_id, page=1, per_page=10)[1] == 0


def test_concurrent_creates_never_overdraw(db: Engine) -> None:
    tenant = make_tenant(db, credits_amount=10, contacts_n=3)  # room for 3 campaigns of 3
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        try:
            _create(db, tenant)
            result = "ok"
        except InsufficientCredits:
            result = "short"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=worker) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 3
    assert outcomes.count("short") == 9
    bal = _balance(db, tenant.account_id)
    assert (bal.reserved, bal.available) == (9, 1)


async def test_two_senders_on_one_range_never_send_a_message_twice(db: Engine, settings) -> None:  # type: ignore[no-untyped-def]
    """Claims are atomic on both databases: two chunk senders racing over the same messages
    (a re-run while the first still runs) split them, and nobody gets two messages."""
    import asyncio

    from core.sender import send_chunk
    from tests.fakes import FakeChannel

    tenant = make_tenant(db, credits_amount=1000, contacts_n=120, phone_base=14160000000)
    cid = _create(db, tenant)
    start_campaign(db, cid)
    channel = FakeChannel(delay=0.005)
    reports = await asyncio.gather(
        *(
            send_chunk(settings=settings, engine=db, campaign_id=cid, start=0, end=120, channel=channel)
            for _ in range(3)
        )
    )
    # Each attempt holds a lease on what it claimed: none touches another's rows, so every
    # message is sent once, and none ends outcome_unknown.
    assert len(channel.sent) == len({m.message_id for m in channel.sent}) == 120
    assert sum(r.accepted for r in reports) == len(channel.sent)
    with session_scope(db) as session:
        from sqlalchemy import func, select

        from models import Message

        attempts, count = session.execute(
            select(func.max(Message.attempts), func.count()).where(Message.campaign_id == cid)
        ).one()
        statuses = set(session.execute(select(Message.status).where(Message.campaign_id == cid)).scalars())
    assert (attempts, count) == (1, 120)  # every message claimed exactly once
    assert statuses == {"sent"}


async def test_a_second_attempt_never_touches_a_live_slow_one(db: Engine, settings) -> None:  # type: ignore[no-untyped-def]
    """Two attempts on one range, the first alive and slow (a chunk run force-crashed while its
    process still runs, then started again): the second leaves the first's claimed rows alone,
    and every outcome of the first lands with its provider id. Nothing is sent twice."""
    import asyncio

    from sqlalchemy import select

    from core.sender import send_chunk
    from models import Message
    from tests.fakes import FakeChannel

    tenant = make_tenant(db, credits_amount=1000, contacts_n=40, phone_base=14170000000)
    cid = _create(db, tenant)
    start_campaign(db, cid)
    slow, fast = FakeChannel(delay=0.4), FakeChannel()
    first = asyncio.create_task(
        send_chunk(settings=settings, engine=db, campaign_id=cid, start=0, end=40, channel=slow)
    )
    await asyncio.sleep(0.2)  # the first has claimed a batch and its requests are in flight
    second = await send_chunk(settings=settings, engine=db, campaign_id=cid, start=0, end=40, channel=fast)
    first_report = await first
    assert second.recovered_unknown == 0 and second.recovered == 0
    sent = [m.message_id for m in slow.sent + fast.sent]
    assert len(sent) == len(set(sent)) == 40
    with session_scope(db) as session:
        rows = session.execute(select(Message).where(Message.campaign_id == cid)).scalars().all()
    by_id = {m.id: m for m in rows}
    assert first_report.accepted == len(slow.sent) > 0
    for m in slow.sent:  # the live attempt's outcomes all landed, with their provider ids
        assert (by_id[m.message_id].status, by_id[m.message_id].provider_message_id) == (
            "sent",
            "p_" + m.message_id,
        )
    assert {m.status for m in rows} == {"sent"} and not any(m.error_code for m in rows)


async def test_orphans_of_a_dead_attempt_are_looked_up_before_anything_else(db: Engine, settings) -> None:  # type: ignore[no-untyped-def]
    """Rows left `sending` by an attempt whose lease expired: where the provider can tell, the
    one it got takes the found id, the one it never got is sent once; none is outcome_unknown."""
    from datetime import timedelta

    from sqlalchemy import select, update

    from channels.base import OutboundMessage
    from core.attempts import LEASE_S
    from core.sender import send_chunk
    from core.timeutil import utcnow
    from models import Message, SendAttempt
    from tests.fakes import FakeChannel

    tenant = make_tenant(db, credits_amount=1000, contacts_n=3, phone_base=14180000000)
    cid = _create(db, tenant, body="Hello")
    start_campaign(db, cid)
    channel = FakeChannel()
    channel.sent_lookup_delay_s = 5.0
    with session_scope(db) as session:
        rows = (
            session.execute(select(Message).where(Message.campaign_id == cid).order_by(Message.seq))
            .scalars()
            .all()
        )
        reached, lost = rows[0], rows[1]
        long_ago = utcnow() - timedelta(seconds=3 * LEASE_S)
        session.add(
            SendAttempt(
                id="att_dead",
                campaign_id=cid,
                seq_start=0,
                seq_end=3,
                started_at=long_ago,
                renewed_at=long_ago,
                expires_at=long_ago + timedelta(seconds=LEASE_S),
            )
        )
        session.execute(
            update(Message)
            .where(Message.id.in_([reached.id, lost.id]))  # type: ignore[attr-defined]
            .values(status="sending", claim_token="att_dead", attempts=1, updated_at=long_ago)
        )
    # The provider got the first one (its answer was lost in the crash), never the second.
    channel.sent.append(OutboundMessage(reached.id, cid, reached.to_address, "MYBRAND", body="Hello"))
    report = await send_chunk(settings=settings, engine=db, campaign_id=cid, start=0, end=3, channel=channel)
    assert (report.recovered, report.recovered_unknown) == (1, 0)
    assert [m.message_id for m in channel.sent] == [reached.id, lost.id, rows[2].id]  # each once
    with session_scope(db) as session:
        after = {
            m.id: m for m in session.execute(select(Message).where(Message.campaign_id == cid)).scalars()
        }
    assert after[reached.id].provider_message_id == "p_" + reached.id and after[reached.id].attempts == 1
    assert after[lost.id].status == "sent" and after[lost.id].provider_message_id == "p_" + lost.id
    assert not any(m.error_code for m in after.values())


def test_finalize_waits_while_an_attempt_may_still_send(db: Engine) -> None:
    from core import attempts, ledger

    tenant = make_tenant(db, credits_amount=100, contacts_n=2, phone_base=14190000000)
    cid = _create(db, tenant)
    start_campaign(db, cid)
    with session_scope(db) as session:
        attempt = attempts.begin_attempt(session, campaign_id=cid, start=0, end=2, flow_run_id="run-1")
    with session_scope(db) as session:
        lifecycle.cancel(session, campaign=lifecycle.load(session, cid))
    with session_scope(db) as session:
        assert lifecycle.load(session, cid).settled_at is None  # not while it lives
        assert ledger.finalize_stopped(session, campaign_id=cid, cancelled=True) is False
        assert attempts.end_attempts_of_run(session, flow_run_id="run-1") == 1  # its process is gone
    with session_scope(db) as session:
        assert ledger.finalize_stopped(session, campaign_id=cid, cancelled=True) is True
        assert lifecycle.load(session, cid).credits_reserved == 0
    assert attempt.startswith("att_")
    assert _balance(db, tenant.account_id).reserved == 0


def test_status_timeout_messages_are_charged(db: Engine) -> None:
    """Accepted by the provider, no final receipt in time: paid for (they were sent)."""
    from sqlalchemy import update

    from core import tracking
    from models import Message

    tenant = make_tenant(db, credits_amount=100, contacts_n=3, phone_base=14200000000)
    cid = _create(db, tenant)
    start_campaign(db, cid)
    with session_scope(db) as session:
        session.execute(update(Message).where(Message.campaign_id == cid).values(status="sent"))
        lifecycle.dispatched(session, campaign_id=cid)
        assert tracking.expire(session, campaign_id=cid) == 3
        assert lifecycle.complete(session, campaign_id=cid)
    assert _balance(db, tenant.account_id).balance == 97
