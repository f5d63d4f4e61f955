"""Credits and the message ledger on every database the machine has (SQLite, PostgreSQL)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from core import campaigns, credits, lifecycle
from core.db import session_scope
from core.errors import InsufficientCredits
from models.schemas import CampaignCreate
from tests.factories import make_tenant, start_campaign


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, engine: Engine) -> Iterator[Engine]:
    if request.param == "sqlite":
        yield engine
    else:
        yield request.getfixturevalue("pg_engine")


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
