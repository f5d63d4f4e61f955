from __future__ import annotations

from sqlalchemy import Engine, select, update

from channels.base import StatusUpdate
from core import tracking
from core.db import session_scope
from models import Message
from tests.core.test_sender import _started_campaign


def test_status_updates_never_move_backwards_and_repeat_harmlessly(engine: Engine) -> None:
    cid = _started_campaign(engine, n=2)
    with session_scope(engine) as session:
        ids = list(session.execute(select(Message.id).where(Message.campaign_id == cid)).scalars())  # type: ignore[arg-type]
        for i, mid in enumerate(ids):
            session.execute(
                update(Message)
                .where(Message.id == mid)  # type: ignore[arg-type]
                .values(status="sent", provider_message_id=f"p{i}")
            )
    with session_scope(engine) as session:
        assert (
            tracking.apply_updates(
                session,
                [StatusUpdate("p0", "delivered"), StatusUpdate("p1", "undelivered", "30003", "unreachable")],
            )
            == 2
        )
    with session_scope(engine) as session:
        # A late "sent" and a redelivered "delivered" change nothing.
        assert (
            tracking.apply_updates(
                session,
                [
                    StatusUpdate("p0", "sent"),
                    StatusUpdate("p0", "delivered"),
                    StatusUpdate("p1", "delivered"),
                ],
            )
            == 0
        )
        rows = {
            m.provider_message_id: m
            for m in session.exec(select(Message).where(Message.campaign_id == cid)).scalars()
        }  # type: ignore[call-overload]
        assert rows["p0"].status == "delivered"
        assert (rows["p1"].status, rows["p1"].error_code) == ("undelivered", "30003")
        assert tracking.nonfinal_count(session, cid) == 0


def test_expire_fails_what_never_got_a_receipt(engine: Engine) -> None:
    cid = _started_campaign(engine, n=3)
    with session_scope(engine) as session:
        session.execute(update(Message).where(Message.campaign_id == cid).values(status="sent"))  # type: ignore[arg-type]
        assert tracking.expire(session, campaign_id=cid) == 3
        codes = set(session.execute(select(Message.error_code).where(Message.campaign_id == cid)).scalars())  # type: ignore[arg-type]
        assert codes == {"status_timeout"}


def test_only_updates_that_could_change_something_need_a_write(engine: Engine) -> None:
    """Twilio's `sent` callback after its 201 (and any redelivery) is sorted out on a read-only
    connection: 20,000 callbacks of a 10,000 campaign queued for the SQLite writer before."""
    cid = _started_campaign(engine, n=2)
    with session_scope(engine) as session:
        ids = list(session.execute(select(Message.id).where(Message.campaign_id == cid)).scalars())  # type: ignore[arg-type]
        session.execute(
            update(Message).where(Message.id == ids[0]).values(status="sent", provider_message_id="p0")  # type: ignore[arg-type]
        )
        session.execute(
            update(Message).where(Message.id == ids[1]).values(status="delivered", provider_message_id="p1")  # type: ignore[arg-type]
        )
    updates = [
        StatusUpdate("p0", "sent"),  # what we know: nothing to write
        StatusUpdate("p0", "delivered"),  # news
        StatusUpdate("p1", "undelivered"),  # a final message stays final
        StatusUpdate("p9", "sent"),  # not recorded yet: kept for replay
    ]
    with session_scope(engine) as session:
        assert tracking.changing(session, updates) == [updates[1], updates[3]]
        assert tracking.changing(session, []) == []
