"""Quiet hours (SPEC §10): a message goes out only inside its recipient's send window; the
others wait `pending`. Zones are chosen at run time so that one is inside the window now and
one outside, whatever the time of the test."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select, update

from core import campaigns, lifecycle, report, snapshot
from core.db import session_scope
from core.sender import send_chunk
from core.settings import Settings
from core.timeutil import utcnow
from core.zones import is_open
from models import Contact, Message
from models.schemas import CampaignCreate, SendWindow
from tests.factories import make_tenant
from tests.fakes import FakeChannel

WINDOW = {"start": "09:00", "end": "17:00"}
FIXED = [f"Etc/GMT{sign}{n}" for n in range(1, 13) for sign in "+-"] + ["UTC"]


def zones_now() -> tuple[str, str]:
    """A zone whose clock is inside WINDOW now and one whose clock is outside."""
    now = utcnow()
    inside = next(z for z in FIXED if is_open(WINDOW, z, now) and is_open(WINDOW, z, now.replace(minute=0)))
    outside = next(z for z in FIXED if not is_open(WINDOW, z, now))
    return inside, outside


def _campaign(engine: Engine, zones: list[str | None], phones: list[str] | None = None) -> str:
    tenant = make_tenant(engine, contacts_n=len(zones))
    with session_scope(engine) as session:
        rows = session.execute(
            select(Contact.id).where(Contact.account_id == tenant.account_id).order_by(Contact.created_at)
        ).scalars()
        for i, (cid, zone) in enumerate(zip(list(rows), zones, strict=True)):
            values: dict[str, object] = {"timezone": zone}
            if phones:
                values["phone"] = phones[i]
            session.execute(update(Contact).where(Contact.id == cid).values(**values))
        cid = campaigns.create_campaign(
            session,
            account_id=tenant.account_id,
            data=CampaignCreate(
                name="quiet",
                channel="sms",
                contact_list_id=tenant.list_id,
                sender_id=tenant.sender,
                body="Hi {{first_name}}",
                send_window=SendWindow(**WINDOW),
            ),
        ).id
        lifecycle.due(session, campaign_id=cid)
        snapshot.take_snapshot(session, campaign_id=cid, default_zone="UTC")
        snapshot.adjust_hold(session, campaign_id=cid)
    return cid


def _rows(engine: Engine, cid: str) -> list[tuple[str | None, str]]:
    with session_scope(engine) as session:
        return [
            (zone, status)
            for zone, status in session.execute(
                select(Message.zone, Message.status).where(Message.campaign_id == cid).order_by(Message.seq)
            ).all()
        ]


async def test_only_recipients_inside_their_window_are_sent(settings: Settings, engine: Engine) -> None:
    inside, outside = zones_now()
    cid = _campaign(engine, [inside, outside, inside, outside])
    channel = FakeChannel()
    result = await send_chunk(
        settings=settings, engine=engine, campaign_id=cid, start=0, end=4, channel=channel
    )
    assert result.accepted == 2 and not result.stopped
    assert _rows(engine, cid) == [
        (inside, "sent"),
        (outside, "pending"),
        (inside, "sent"),
        (outside, "pending"),
    ]
    # Running again sends nothing more while the window stays closed for the others.
    await send_chunk(settings=settings, engine=engine, campaign_id=cid, start=0, end=4, channel=channel)
    assert len(channel.sent) == 2
    with session_scope(engine) as session:
        wait = report.build(session, cid).waiting
    assert wait is not None and wait.waiting == 2 and wait.next_zone == outside
    assert wait.next_open > utcnow()


async def test_a_window_that_closes_after_the_claim_holds_the_message(
    settings: Settings, engine: Engine, monkeypatch: object
) -> None:
    inside, _outside = zones_now()
    cid = _campaign(engine, [inside, inside])
    import core.sender as sender_module

    calls = {"n": 0}
    real = sender_module.zones.is_open

    def closes_after_claim(window: dict[str, str] | None, zone: str, now: object) -> bool:
        calls["n"] += 1
        return calls["n"] <= 1 and real(window, zone, now)  # type: ignore[arg-type]

    monkeypatch.setattr(sender_module.zones, "is_open", closes_after_claim)  # type: ignore[attr-defined]
    channel = FakeChannel()
    result = await send_chunk(
        settings=settings, engine=engine, campaign_id=cid, start=0, end=2, channel=channel
    )
    assert channel.sent == [] and result.held == 2 and not result.stopped
    assert [s for _z, s in _rows(engine, cid)] == ["pending", "pending"]


def test_the_snapshot_fixes_each_recipient_zone(settings: Settings, engine: Engine) -> None:
    cid = _campaign(
        engine,
        ["Asia/Tokyo", None, None],
        phones=["+14155559001", "+33612345678", "+14155559003"],
    )
    assert [z for z, _s in _rows(engine, cid)] == ["Asia/Tokyo", "Europe/Paris", "UTC"]


def test_a_campaign_without_window_fixes_no_zone(settings: Settings, engine: Engine) -> None:
    tenant = make_tenant(engine, contacts_n=2)
    with session_scope(engine) as session:
        cid = campaigns.create_campaign(
            session,
            account_id=tenant.account_id,
            data=CampaignCreate(
                name="any time",
                channel="sms",
                contact_list_id=tenant.list_id,
                sender_id=tenant.sender,
                body="x",
            ),
        ).id
        lifecycle.due(session, campaign_id=cid)
        snapshot.take_snapshot(session, campaign_id=cid)
    assert [z for z, _s in _rows(engine, cid)] == [None, None]


async def test_no_retry_goes_out_once_the_window_has_closed(
    settings: Settings, engine: Engine, monkeypatch: Any
) -> None:
    """Regression: the window was checked once per message, so a message waiting out a 429's
    Retry-After (or the pacer) was still handed to the provider after its window closed."""
    from channels.base import TransientSendError

    inside, _outside = zones_now()
    cid = _campaign(engine, [inside])
    import core.sender as sender_module

    closed = {"now": False}
    real = sender_module.zones.is_open
    monkeypatch.setattr(
        sender_module.zones,
        "is_open",
        lambda window, zone, now: not closed["now"] and real(window, zone, now),
    )

    def rate_limited_then_closed(message: Any, attempt: int) -> None:
        closed["now"] = True  # the window closes while the provider makes us wait
        raise TransientSendError("429", code="429", retry_after=0.05)

    channel = FakeChannel(rate_limited_then_closed)
    result = await send_chunk(
        settings=settings, engine=engine, campaign_id=cid, start=0, end=1, channel=channel
    )
    assert channel.attempts == {next(iter(channel.attempts)): 1}  # one try, none after the close
    assert result.held == 1 and not result.stopped
    assert [s for _z, s in _rows(engine, cid)] == ["pending"]
