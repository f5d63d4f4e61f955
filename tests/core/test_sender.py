"""Sending a chunk: at most once per recipient, retries, permanent errors, cancellation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import Engine, select, update

from channels.base import OutboundMessage, PermanentSendError, TransientSendError
from core import campaigns, lifecycle, runs, snapshot
from core.db import session_scope
from core.sender import send_chunk
from core.settings import Settings
from core.timeutil import utcnow
from models import Contact, Message
from models.schemas import CampaignCreate
from tests.factories import make_tenant
from tests.fakes import FakeChannel


def _started_campaign(
    engine: Engine, n: int = 5, body: str = "Hi {{first_name}}, {{attributes.code}}"
) -> str:
    tenant = make_tenant(engine, contacts_n=n, attributes={"code": "C42"})
    with session_scope(engine) as session:
        cid = campaigns.create_campaign(
            session,
            account_id=tenant.account_id,
            data=CampaignCreate(
                name="x", channel="sms", contact_list_id=tenant.list_id, sender_id=tenant.sender, body=body
            ),
        ).id
        lifecycle.due(session, campaign_id=cid)
        snapshot.take_snapshot(session, campaign_id=cid)
        snapshot.adjust_hold(session, campaign_id=cid)
    return cid


def _messages(engine: Engine, cid: str) -> list[Message]:
    with session_scope(engine) as session:
        return list(
            session.exec(
                select(Message)
                .where(Message.campaign_id == cid)  # type: ignore[call-overload]
                .order_by(Message.seq)
            ).scalars()
        )


async def test_each_recipient_gets_one_personalized_message(settings: Settings, engine: Engine) -> None:
    cid = _started_campaign(engine)
    channel = FakeChannel()
    report = await send_chunk(
        settings=settings, engine=engine, campaign_id=cid, start=0, end=5, channel=channel
    )
    assert report.accepted == 5 and report.failed == 0
    assert sorted(m.body for m in channel.sent) == ["Hi Customer, C42"] * 5
    assert [m.status for m in _messages(engine, cid)] == ["sent"] * 5
    assert all(m.provider_message_id == "p_" + m.id for m in _messages(engine, cid))
    assert channel.opened == channel.closed == 1


async def test_rerunning_a_chunk_sends_nothing_twice(settings: Settings, engine: Engine) -> None:
    cid = _started_campaign(engine)
    channel = FakeChannel()
    await send_chunk(settings=settings, engine=engine, campaign_id=cid, start=0, end=3, channel=channel)
    await send_chunk(settings=settings, engine=engine, campaign_id=cid, start=0, end=5, channel=channel)
    await send_chunk(settings=settings, engine=engine, campaign_id=cid, start=0, end=5, channel=channel)
    assert len(channel.sent) == 5
    assert len({m.message_id for m in channel.sent}) == 5


async def test_in_flight_rows_of_a_dead_attempt_are_not_resent(settings: Settings, engine: Engine) -> None:
    cid = _started_campaign(engine)
    first = _messages(engine, cid)[0]
    with session_scope(engine) as session:  # a worker died after claiming this message
        session.execute(
            update(Message)
            .where(Message.id == first.id)  # type: ignore[arg-type]
            .values(status="sending", claim_token="dead")
        )
    channel = FakeChannel()
    report = await send_chunk(
        settings=settings, engine=engine, campaign_id=cid, start=0, end=5, channel=channel
    )
    assert report.recovered_unknown == 1
    assert first.id not in {m.message_id for m in channel.sent}
    row = next(m for m in _messages(engine, cid) if m.id == first.id)
    assert (row.status, row.error_code) == ("failed", "outcome_unknown")


async def test_transient_errors_are_retried_honouring_retry_after(settings: Settings, engine: Engine) -> None:
    cid = _started_campaign(engine, n=2)

    def flaky(message: OutboundMessage, attempt: int) -> Any:
        if attempt == 1:
            raise TransientSendError("429", code="429", retry_after=0.2)
        return None

    channel = FakeChannel(flaky)
    loop = asyncio.get_running_loop()
    start = loop.time()
    report = await send_chunk(
        settings=settings, engine=engine, campaign_id=cid, start=0, end=2, channel=channel
    )
    assert report.accepted == 2
    assert loop.time() - start >= 0.2
    assert all(n == 2 for n in channel.attempts.values())


async def test_transient_errors_give_up_after_the_retry_window(settings: Settings, engine: Engine) -> None:
    cid = _started_campaign(engine, n=1)

    def down(message: OutboundMessage, attempt: int) -> Any:
        raise TransientSendError("503 from provider", code="503", retry_after=0.5)

    settings = settings.model_copy(
        update={"delivery": settings.delivery.model_copy(update={"retry_window_s": 1.2})}
    )
    channel = FakeChannel(down)
    report = await send_chunk(
        settings=settings, engine=engine, campaign_id=cid, start=0, end=1, channel=channel
    )
    assert report.failed == 1
    assert 2 <= sum(channel.attempts.values()) <= 4
    row = _messages(engine, cid)[0]
    assert (row.status, row.error_code) == ("failed", "503")


async def test_permanent_errors_are_recorded_and_never_retried(settings: Settings, engine: Engine) -> None:
    cid = _started_campaign(engine, n=3)

    def opted_out(message: OutboundMessage, attempt: int) -> Any:
        if message.to.endswith("0"):
            raise PermanentSendError("recipient opted out", code="21610", opt_out=True)
        return None

    channel = FakeChannel(opted_out)
    report = await send_chunk(
        settings=settings, engine=engine, campaign_id=cid, start=0, end=3, channel=channel
    )
    assert (report.accepted, report.failed) == (2, 1)
    failed = [m for m in _messages(engine, cid) if m.status == "failed"]
    assert [(m.error_code, m.attempts) for m in failed] == [("21610", 1)]
    assert sum(channel.attempts.values()) == 3
    with session_scope(engine) as session:
        contact = session.get(Contact, failed[0].contact_id)
        assert contact is not None and contact.unsubscribed_at is not None


async def test_cancel_stops_the_chunk(settings: Settings, engine: Engine) -> None:
    cid = _started_campaign(engine, n=1)
    with session_scope(engine) as session:
        lifecycle.cancel(session, campaign=lifecycle.load(session, cid))
    channel = FakeChannel()
    report = await send_chunk(
        settings=settings, engine=engine, campaign_id=cid, start=0, end=1, channel=channel
    )
    assert report.stopped and channel.sent == []


@pytest.mark.parametrize("rate", [20.0])
async def test_sends_are_paced(settings: Settings, engine: Engine, rate: float) -> None:
    cid = _started_campaign(engine, n=40)
    settings = settings.model_copy(
        update={"sms": settings.sms.model_copy(update={"rate_per_second": rate, "concurrency": 4})}
    )
    loop = asyncio.get_running_loop()
    start = loop.time()
    await send_chunk(
        settings=settings, engine=engine, campaign_id=cid, start=0, end=40, channel=FakeChannel()
    )
    # burst of 20, then 20 more at 20/s
    assert loop.time() - start >= 0.9


async def test_a_blocked_bot_opts_out_of_that_channel_only(settings: Settings, engine: Engine) -> None:
    from core import audience

    tenant = make_tenant(engine, contacts_n=2, channel="telegram", sender="shop_bot")
    with session_scope(engine) as session:
        cid = campaigns.create_campaign(
            session,
            account_id=tenant.account_id,
            data=CampaignCreate(
                name="tg", channel="telegram", contact_list_id=tenant.list_id, sender_id="shop_bot", body="hi"
            ),
        ).id
        lifecycle.due(session, campaign_id=cid)
        snapshot.take_snapshot(session, campaign_id=cid)

    def blocked(message: OutboundMessage, attempt: int) -> Any:
        if message.to == "1000":
            raise PermanentSendError(
                "Forbidden: bot was blocked by the user", code="bot_blocked", opt_out=True
            )
        return None

    report = await send_chunk(
        settings=settings, engine=engine, campaign_id=cid, start=0, end=2, channel=FakeChannel(blocked)
    )
    assert (report.accepted, report.failed) == (1, 1)
    with session_scope(engine) as session:

        def reach(channel: str) -> int:
            return audience.estimate(
                session, account_id=tenant.account_id, list_id=tenant.list_id, channel=channel, body="hi"
            ).recipients

        assert (reach("telegram"), reach("sms"), reach("email")) == (1, 2, 2)
        contacts = session.execute(select(Contact).where(Contact.account_id == tenant.account_id)).scalars()
        assert all(c.unsubscribed_at is None for c in contacts)


async def test_a_contact_that_opted_out_after_the_snapshot_is_not_sent(
    settings: Settings, engine: Engine
) -> None:
    cid = _started_campaign(engine, n=2)
    first = _messages(engine, cid)[0]
    with session_scope(engine) as session:
        session.execute(
            update(Contact).where(Contact.id == first.contact_id).values(unsubscribed_at=utcnow())
        )
    channel = FakeChannel()
    report = await send_chunk(
        settings=settings, engine=engine, campaign_id=cid, start=0, end=2, channel=channel
    )
    assert (report.accepted, report.failed) == (1, 1)
    assert [m.to for m in channel.sent] == [_messages(engine, cid)[1].to_address]
    row = _messages(engine, cid)[0]
    assert (row.status, row.error_code) == ("failed", "opted_out")


async def test_a_config_error_stops_the_chunk_and_keeps_messages_pending(
    settings: Settings, engine: Engine
) -> None:
    from channels.base import ProviderConfigError

    cid = _started_campaign(engine, n=5)

    def refused(message: OutboundMessage, attempt: int) -> Any:
        raise ProviderConfigError("Twilio refused the request (20003): Authenticate")

    with pytest.raises(ProviderConfigError):
        await send_chunk(
            settings=settings, engine=engine, campaign_id=cid, start=0, end=5, channel=FakeChannel(refused)
        )
    assert {m.status for m in _messages(engine, cid)} == {"pending"}


def test_batched_snapshot_restarts_a_partial_one(engine: Engine, settings: Settings) -> None:
    from sqlalchemy import insert

    from core.db import make_engine

    tenant = make_tenant(engine, contacts_n=4)
    with session_scope(engine) as session:
        cid = campaigns.create_campaign(
            session,
            account_id=tenant.account_id,
            data=CampaignCreate(
                name="x", channel="sms", contact_list_id=tenant.list_id, sender_id=tenant.sender, body="hi"
            ),
        ).id
        contact_id = (
            session.execute(select(Contact.id).where(Contact.account_id == tenant.account_id))
            .scalars()
            .first()
        )
        # What a run killed mid-snapshot leaves behind: rows, but no snapshot_at.
        session.execute(
            insert(Message.__table__),  # type: ignore[attr-defined]
            [
                {
                    "id": "msg_partial",
                    "campaign_id": cid,
                    "contact_id": contact_id,
                    "seq": 0,
                    "to_address": "+1",
                    "status": "pending",
                    "cost": 1,
                    "attempts": 0,
                    "updated_at": utcnow(),
                }
            ],
        )
    reader = make_engine(settings.resolved_database_url(), read_only=True)
    campaign = snapshot.take_snapshot_in_batches(engine, reader, campaign_id=cid)
    assert campaign.snapshot_at is not None and campaign.total_recipients == 4
    rows = _messages(engine, cid)
    assert [m.seq for m in rows] == [0, 1, 2, 3] and "msg_partial" not in {m.id for m in rows}
    again = snapshot.take_snapshot_in_batches(engine, reader, campaign_id=cid)  # idempotent
    assert again.snapshot_at == campaign.snapshot_at and len(_messages(engine, cid)) == 4


def test_a_crash_is_handled_once_even_by_two_reconcilers(engine: Engine) -> None:
    cid = _started_campaign(engine, n=1)
    with session_scope(engine) as session:
        runs.record_flow_run(session, campaign_id=cid, flow_run_id="run-1")
    outcomes = []
    for _ in range(2):
        with session_scope(engine) as session:
            outcomes.append(
                runs.run_ended(
                    session, campaign_id=cid, flow_run_id="run-1", end=runs.RunEnd.crashed, max_resumes=3
                )
            )
    assert outcomes == ["resumed", ""]
    with session_scope(engine) as session:
        c = lifecycle.load(session, cid)
        assert (c.status, c.flow_run_id, c.resume_count) == ("processing", None, 1)


async def test_outcomes_written_while_threads_are_busy_are_never_lost(
    settings: Settings, engine: Engine
) -> None:
    """A periodic flush still queued for a thread when the chunk ends must still be written (it
    once was cancelled there, leaving accepted messages `sending` forever)."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
    cid = _started_campaign(engine, n=32)
    channel = FakeChannel(delay=0.3)  # one claim, 16 at a time: two rounds, ~0.6 s

    async def block_the_thread() -> None:
        # Everything is claimed by now; the 0.5 s periodic flush queues behind this, and the
        # chunk ends (0.6 s) while it waits.
        await asyncio.sleep(0.35)
        await loop.run_in_executor(None, time.sleep, 1.0)

    blocker = asyncio.create_task(block_the_thread())
    report = await send_chunk(
        settings=settings, engine=engine, campaign_id=cid, start=0, end=40, channel=channel
    )
    await blocker
    assert report.accepted == 32
    assert {m.status for m in _messages(engine, cid)} == {"sent"}


async def test_a_pause_stops_new_requests_and_hands_the_rest_back(settings: Settings, engine: Engine) -> None:
    """Once the senders have seen the pause (the watcher looks 4 times a second), no new
    request starts; in-flight ones finish and are recorded; claimed-but-unsent rows go back to
    pending, and a resumed attempt sends only those."""
    from core import attempts

    cid = _started_campaign(engine, n=60)
    channel = FakeChannel(delay=0.05)
    settings = settings.model_copy(update={"sms": settings.sms.model_copy(update={"concurrency": 2})})
    task = asyncio.create_task(
        send_chunk(settings=settings, engine=engine, campaign_id=cid, start=0, end=60, channel=channel)
    )
    await asyncio.sleep(0.3)
    with session_scope(engine) as session:
        paused = lifecycle.pause(session, campaign=lifecycle.load(session, cid))
    while True:  # what the API waits for before it answers
        with session_scope(engine) as session:
            if not attempts.unaware_attempts(session, campaign_id=cid, version=paused.control_version):
                break
        await asyncio.sleep(0.02)
    answered = len(channel.attempts)
    report = await task
    assert report.stopped
    assert len(channel.attempts) <= answered + 2  # at most the two requests already in flight
    statuses = {m.status for m in _messages(engine, cid)}
    assert statuses == {"sent", "pending"}  # nothing left `sending`, nothing unknown
    before = len(channel.sent)
    with session_scope(engine) as session:
        lifecycle.resume(session, campaign=lifecycle.load(session, cid))
    await send_chunk(settings=settings, engine=engine, campaign_id=cid, start=0, end=60, channel=channel)
    assert len(channel.sent) == 60 and len({m.message_id for m in channel.sent}) == 60
    assert before < 60


async def test_the_provider_gets_the_text_that_was_priced(settings: Settings, engine: Engine) -> None:
    """Regression: a PATCH of a contact during sending once made the provider receive a
    1,600-character UCS-2 text (24 segments) priced at 1 credit. Content is frozen at the
    snapshot."""
    cid = _started_campaign(engine, n=2, body="Hi {{name}}")
    cost_before = sum(m.cost for m in _messages(engine, cid))
    with session_scope(engine) as session:
        session.execute(update(Contact).values(name="Ж" * 1600))
    channel = FakeChannel()
    await send_chunk(settings=settings, engine=engine, campaign_id=cid, start=0, end=2, channel=channel)
    assert sorted(m.body for m in channel.sent) == ["Hi Customer 0", "Hi Customer 1"]
    assert cost_before == 2


async def test_an_unexpected_error_fails_that_message_not_the_chunk(
    settings: Settings, engine: Engine
) -> None:
    """Regression: a bug on one message (a header with a newline raised ValueError) failed the
    whole chunk and then the campaign."""
    cid = _started_campaign(engine, n=4)

    def buggy(message: OutboundMessage, attempt: int) -> Any:
        if message.to.endswith("1"):
            raise ValueError("Header values may not contain linefeed or carriage return characters")
        return None

    report = await send_chunk(
        settings=settings, engine=engine, campaign_id=cid, start=0, end=4, channel=FakeChannel(buggy)
    )
    assert (report.accepted, report.failed) == (3, 1)
    failed = [m for m in _messages(engine, cid) if m.status == "failed"]
    assert [(m.error_code, m.error_message) for m in failed] == [("internal_error", "internal error")]


async def test_a_lost_answer_is_looked_up_not_resent_blindly(settings: Settings, engine: Engine) -> None:
    """A request sent without an answer: where the provider can list what it got, the message is
    found (takes that id) or, if the provider never got it, sent once more."""
    from channels.base import UnknownOutcomeError

    cid = _started_campaign(engine, n=2)
    rows = _messages(engine, cid)
    lost_after_arrival, lost_before_arrival = rows[0].id, rows[1].id

    def flaky(message: OutboundMessage, attempt: int) -> Any:
        if attempt == 1 and message.message_id == lost_before_arrival:
            raise UnknownOutcomeError("connection dropped")  # it never reached the provider
        if attempt == 1 and message.message_id == lost_after_arrival:
            channel.sent.append(message)  # it reached the provider; the answer was lost
            raise UnknownOutcomeError("read timeout")
        return None

    channel = FakeChannel(flaky)
    channel.sent_lookup_delay_s = 0.1
    report = await send_chunk(
        settings=settings, engine=engine, campaign_id=cid, start=0, end=2, channel=channel
    )
    assert report.accepted == 2
    assert channel.attempts == {lost_after_arrival: 1, lost_before_arrival: 2}
    assert [m.message_id for m in channel.sent] == [lost_after_arrival, lost_before_arrival]
    assert {m.status for m in _messages(engine, cid)} == {"sent"}


async def test_no_lookup_means_outcome_unknown_charged_and_never_resent(
    settings: Settings, engine: Engine
) -> None:
    from channels.base import UnknownOutcomeError

    cid = _started_campaign(engine, n=1)

    def lost(message: OutboundMessage, attempt: int) -> Any:
        raise UnknownOutcomeError("read timeout")

    channel = FakeChannel(lost)
    await send_chunk(settings=settings, engine=engine, campaign_id=cid, start=0, end=1, channel=channel)
    row = _messages(engine, cid)[0]
    assert (row.status, row.error_code, row.retryable) == ("failed", "outcome_unknown", True)
    assert sum(channel.attempts.values()) == 1
