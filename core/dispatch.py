"""Send one chunk of a campaign: claim → render → send concurrently → record in bulk.

The message ledger makes this at-most-once per (campaign, contact): a message is claimed
(`pending → sending`, with a claim token) and committed before its provider call, and its
outcome is recorded after. A retried or re-run chunk only claims `pending` rows; rows left
`sending` by a dead attempt are not resent blindly (their outcome is unknown).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import random
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, bindparam, select, update
from sqlmodel import col

from channels.base import (
    Channel,
    OutboundMessage,
    PermanentSendError,
    ProviderConfigError,
    SendResult,
    TransientSendError,
)
from channels.registry import build_channel
from core import campaigns, tracking
from core.db import session_scope
from core.pacing import Pacer, pacer_for
from core.render import contact_values, render
from core.settings import Settings
from core.timeutil import utcnow
from models import Campaign, CampaignStatus, ChannelOptOut, Contact, Message, MessageStatus

log = logging.getLogger(__name__)
CLAIM_BATCH = 500
FLUSH_EVERY = 250
FLUSH_INTERVAL_S = 0.5


@dataclass
class ChunkReport:
    """What one chunk did."""

    claimed: int = 0
    accepted: int = 0
    delivered: int = 0
    failed: int = 0
    recovered_unknown: int = 0
    stopped: bool = False
    errors: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Outcome:
    message_id: str
    contact_id: str
    status: str
    provider_message_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    opt_out: bool = False


@dataclass(frozen=True)
class CampaignView:
    """What sending needs to know about a campaign (a plain copy, no session)."""

    id: str
    channel: str
    sender: str
    body: str | None
    subject: str | None
    template: dict[str, Any] | None

    @classmethod
    def of(cls, campaign: Campaign) -> CampaignView:
        return cls(
            campaign.id,
            campaign.channel,
            campaign.sender_value,
            campaign.body,
            campaign.subject,
            campaign.template,
        )


def _render_template(template: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
    rendered = copy.deepcopy(template)
    for component in rendered.get("components", []) or []:
        for parameter in component.get("parameters", []) or []:
            if isinstance(parameter, dict) and isinstance(parameter.get("text"), str):
                parameter["text"] = render(parameter["text"], values)
    return rendered


def build_message(view: CampaignView, row: dict[str, Any]) -> OutboundMessage:
    """Personalize the campaign for one recipient."""
    values = contact_values(row["name"] or "", row["phone"], row["email"], row["attributes"])
    return OutboundMessage(
        message_id=row["id"],
        campaign_id=view.id,
        to=row["to_address"],
        sender=view.sender,
        body=render(view.body, values) if view.body is not None else None,
        subject=render(view.subject, values) if view.subject is not None else None,
        template=_render_template(view.template, values) if view.template else None,
        contact_name=row["name"] or "",
    )


class ChunkSender:
    """Sends the messages of one seq range [start, end) of a campaign."""

    def __init__(
        self,
        *,
        settings: Settings,
        engine: Engine,
        campaign_id: str,
        start: int,
        end: int,
        channel: Channel | None = None,
        share: float = 1.0,
    ) -> None:
        self.settings = settings
        # This sender's part of the sender's rate and concurrency when several processes send
        # one campaign at once (1/number of chunk runs in flight), so together they keep the
        # provider's limits.
        self.share = min(1.0, max(share, 1e-6))
        self.engine = engine
        self.campaign_id = campaign_id
        self.start = start
        self.end = end
        self.channel = channel
        self.report = ChunkReport()
        self._buffer: list[_Outcome] = []
        # Claimed rows whose request has not gone out yet: safe to hand back if we stop.
        self._unsent: set[str] = set()
        self._writes: set[asyncio.Future[None]] = set()
        self.channel_name = ""

    # -- database steps (run in a thread so in-flight sends keep going) --

    def _load(self) -> CampaignView | None:
        with session_scope(self.engine) as session:
            campaign = campaigns.load(session, self.campaign_id)
            if campaign.status not in (CampaignStatus.processing, CampaignStatus.sent):
                return None
            return CampaignView.of(campaign)

    def _recover_stale(self) -> int:
        # Rows still `sending` at chunk start belong to a dead attempt: the request may have
        # reached the provider, so they are failed as outcome_unknown rather than resent.
        with session_scope(self.engine) as session:
            result = session.execute(
                update(Message)
                .where(
                    col(Message.campaign_id) == self.campaign_id,
                    col(Message.seq) >= self.start,
                    col(Message.seq) < self.end,
                    col(Message.status) == MessageStatus.sending,
                )
                .values(
                    status=MessageStatus.failed,
                    error_code="outcome_unknown",
                    error_message="a previous attempt died with this message in flight",
                    claim_token=None,
                    updated_at=utcnow(),
                )
            )
            return int(result.rowcount)  # type: ignore[attr-defined]

    def _claim(self, limit: int) -> list[dict[str, Any]] | None:
        """Claim up to `limit` pending rows; None if the campaign stopped."""
        token = secrets.token_hex(8)
        with session_scope(self.engine) as session:
            if campaigns.status_of(session, self.campaign_id) not in (
                CampaignStatus.processing,
                CampaignStatus.sent,
            ):
                return None
            ids = (
                select(col(Message.id))
                .where(
                    col(Message.campaign_id) == self.campaign_id,
                    col(Message.seq) >= self.start,
                    col(Message.seq) < self.end,
                    col(Message.status) == MessageStatus.pending,
                )
                .order_by(col(Message.seq))
                .limit(limit)
            )
            if self.engine.dialect.name == "postgresql":
                ids = ids.with_for_update(skip_locked=True)
            session.execute(
                update(Message)
                .where(col(Message.id).in_(ids.scalar_subquery()))
                .values(
                    status=MessageStatus.sending,
                    claim_token=token,
                    attempts=Message.attempts + 1,
                    updated_at=utcnow(),
                )
                .execution_options(synchronize_session=False)
            )
            rows = (
                session.execute(
                    select(
                        col(Message.id),
                        col(Message.contact_id),
                        col(Message.to_address),
                        col(Contact.name),
                        col(Contact.phone),
                        col(Contact.email),
                        col(Contact.attributes),
                        col(Contact.unsubscribed_at),
                        col(ChannelOptOut.created_at).label("channel_opt_out"),
                    )
                    .outerjoin(Contact, col(Contact.id) == col(Message.contact_id))
                    .outerjoin(
                        ChannelOptOut,
                        (col(ChannelOptOut.contact_id) == col(Message.contact_id))
                        & (col(ChannelOptOut.channel) == self.channel_name),
                    )
                    .where(col(Message.claim_token) == token)
                    .order_by(col(Message.seq))
                )
                .mappings()
                .all()
            )
            return [dict(r) for r in rows]

    def _unclaim(self, message_ids: list[str]) -> None:
        with session_scope(self.engine) as session:
            session.execute(
                update(Message)
                .where(col(Message.id).in_(message_ids), col(Message.status) == MessageStatus.sending)
                .values(status=MessageStatus.pending, claim_token=None, updated_at=utcnow())
            )

    def _write(self, outcomes: list[_Outcome]) -> None:
        now = utcnow()
        table = Message.__table__  # type: ignore[attr-defined]
        stmt = (
            update(table)
            .where(table.c.id == bindparam("b_id"), table.c.status == MessageStatus.sending)
            .values(
                status=bindparam("b_status"),
                provider_message_id=bindparam("b_pid"),
                error_code=bindparam("b_code"),
                error_message=bindparam("b_msg"),
                sent_at=bindparam("b_sent"),
                updated_at=now,
                claim_token=None,
            )
        )
        params = [
            {
                "b_id": o.message_id,
                "b_status": o.status,
                "b_pid": o.provider_message_id,
                "b_code": o.error_code,
                "b_msg": o.error_message,
                "b_sent": now if o.provider_message_id else None,
            }
            for o in outcomes
        ]
        opted_out = [o.contact_id for o in outcomes if o.opt_out]
        with session_scope(self.engine) as session:
            session.connection().execute(stmt, params)
            tracking.replay_events(
                session, provider_ids=[o.provider_message_id for o in outcomes if o.provider_message_id]
            )
            if opted_out and self.channel_name == "sms":
                # An SMS opt-out (Twilio 21610) is a STOP: the contact is unsubscribed everywhere.
                session.execute(
                    update(Contact)
                    .where(col(Contact.id).in_(opted_out), col(Contact.unsubscribed_at).is_(None))
                    .values(unsubscribed_at=now)
                )
            elif opted_out:
                # Blocked the bot, stopped marketing messages: out of this channel only.
                known = set(
                    session.execute(
                        select(col(ChannelOptOut.contact_id)).where(
                            col(ChannelOptOut.contact_id).in_(opted_out),
                            col(ChannelOptOut.channel) == self.channel_name,
                        )
                    ).scalars()
                )
                session.add_all(
                    ChannelOptOut(contact_id=cid, channel=self.channel_name, created_at=now)
                    for cid in dict.fromkeys(opted_out)
                    if cid not in known
                )

    async def _flush(self) -> None:
        if self._buffer:
            batch, self._buffer = self._buffer, []
            # Shielded: a write cancelled while queued for a thread would never run, and its
            # messages would stay `sending` although the provider has them.
            write = asyncio.ensure_future(asyncio.to_thread(self._write, batch))
            self._writes.add(write)
            write.add_done_callback(self._writes.discard)
            await asyncio.shield(write)

    async def _flush_periodically(self, stop: asyncio.Event) -> None:
        # Results reach the database within FLUSH_INTERVAL_S even when sends are slow.
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), FLUSH_INTERVAL_S)
            await self._flush()

    # -- sending --

    async def _send_with_retries(
        self, channel: Channel, pacer: Pacer, message: OutboundMessage
    ) -> SendResult:
        delivery = self.settings.delivery
        deadline = time.monotonic() + delivery.retry_window_s
        attempt = 0
        while True:
            await pacer.acquire()
            self._unsent.discard(message.message_id)
            try:
                return await channel.send(message)
            except ProviderConfigError:
                self._unsent.add(message.message_id)  # refused before sending: hand it back
                raise
            except TransientSendError as exc:
                attempt += 1
                backoff = min(delivery.max_backoff_s, 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
                delay = max(exc.retry_after or 0.0, backoff)
                if exc.retry_after:
                    pacer.pause(exc.retry_after)
                if time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)

    async def _send_one(
        self, channel: Channel, pacer: Pacer, view: CampaignView, row: dict[str, Any]
    ) -> None:
        try:
            if row["unsubscribed_at"] is not None or row["channel_opt_out"] is not None:
                self._unsent.discard(row["id"])  # decided here: never handed back as pending
                raise PermanentSendError("contact opted out before sending", code="opted_out")
            result = await self._send_with_retries(channel, pacer, build_message(view, row))
            outcome = _Outcome(row["id"], row["contact_id"], result.status, result.provider_message_id)
        except PermanentSendError as exc:
            outcome = _Outcome(
                row["id"],
                row["contact_id"],
                MessageStatus.failed,
                error_code=exc.code,
                error_message=exc.message[:1000],
                opt_out=exc.opt_out,
            )
        except TransientSendError as exc:
            outcome = _Outcome(
                row["id"],
                row["contact_id"],
                MessageStatus.failed,
                error_code=exc.code or "retry_window_exceeded",
                error_message=f"gave up after the retry window: {exc.message}"[:1000],
            )
        self._count(outcome)
        self._buffer.append(outcome)

    def _count(self, outcome: _Outcome) -> None:
        if outcome.status == MessageStatus.failed:
            self.report.failed += 1
            code = outcome.error_code or "unknown"
            self.report.errors[code] = self.report.errors.get(code, 0) + 1
        else:
            self.report.accepted += 1
            if outcome.status == MessageStatus.delivered:
                self.report.delivered += 1

    async def run(self) -> ChunkReport:
        """Send every pending message of the range; stops early if the campaign is cancelled."""
        view = await asyncio.to_thread(self._load)
        if view is None:
            self.report.stopped = True
            return self.report
        self.channel_name = view.channel
        self.report.recovered_unknown = await asyncio.to_thread(self._recover_stale)
        channel = self.channel or build_channel(view.channel, self.settings)
        config = self.settings.channel(view.channel)
        rate = (
            config.rate_per_second if config.rate_per_second is not None else channel.default_rate_per_second
        )
        concurrency = max(1, round((config.concurrency or channel.default_concurrency) * self.share))
        pacer = pacer_for(view.channel, view.sender, rate * self.share if rate else rate, concurrency)
        # Claim a few rounds of sends at a time: what is claimed but unsent when a worker is
        # killed can only be failed as outcome_unknown, but every claim is a write transaction
        # (4x the concurrency instead of 2x: +15 % sending with two chunk processes on SQLite).
        claim_batch = min(CLAIM_BATCH, max(32, 4 * concurrency))
        queue: deque[dict[str, Any]] = deque()
        claiming: asyncio.Task[None] | None = None
        exhausted = False
        failure: list[BaseException] = []  # a send that raised something other than a send error

        async def refill() -> None:
            nonlocal exhausted
            rows = await asyncio.to_thread(self._claim, claim_batch)
            if rows is None:  # cancelled or no longer sending: what is claimed goes back unsent
                self.report.stopped = exhausted = True
                queue.clear()
            elif not rows:
                exhausted = True
            else:
                self.report.claimed += len(rows)
                self._unsent.update(row["id"] for row in rows)
                queue.extend(rows)

        async def next_row() -> dict[str, Any] | None:
            # One claim at a time, started before the queue runs dry so sends never wait on it.
            nonlocal claiming
            while not failure:
                if claiming is not None and claiming.done():
                    finished, claiming = claiming, None
                    finished.result()  # a claim that failed (database error) fails the chunk
                if len(queue) < claim_batch // 2 and not exhausted and claiming is None:
                    claiming = asyncio.create_task(refill())
                if queue:
                    return queue.popleft()
                if claiming is None:
                    return None  # exhausted and drained
                await asyncio.wait({claiming})
            return None

        async def sender() -> None:
            # A fixed pool of senders (not a task per message): the concurrency cap per chunk;
            # the pacer's semaphore caps chunks of one sender sharing this process.
            try:
                while (row := await next_row()) is not None:
                    async with pacer.semaphore:
                        await self._send_one(channel, pacer, view, row)
                    if len(self._buffer) >= FLUSH_EVERY:
                        await self._flush()
            except BaseException as exc:  # config error or bug: stop every sender, hand back the rest
                failure.append(exc)
                raise

        stop_flushing = asyncio.Event()
        flusher = asyncio.create_task(self._flush_periodically(stop_flushing))
        await channel.open()
        senders: list[asyncio.Task[None]] = []
        try:
            senders = [asyncio.create_task(sender()) for _ in range(concurrency)]
            await asyncio.gather(*senders, return_exceptions=True)
            if failure:
                raise failure[0]
        finally:
            for task in senders:
                task.cancel()
            await asyncio.gather(*senders, return_exceptions=True)
            if claiming is not None:
                await asyncio.gather(claiming, return_exceptions=True)
            stop_flushing.set()
            await asyncio.gather(flusher, return_exceptions=True)
            await self._flush()  # recorded outcomes first, then hand back what never went out
            if self._writes:
                await asyncio.gather(*self._writes)
            if self._unsent:  # stopped early (cancelled, shutting down, config error)
                self._unclaim(list(self._unsent))
            await channel.close()
        if not flusher.cancelled() and flusher.exception() is not None:
            raise flusher.exception()  # type: ignore[misc]  # a failed write fails the chunk (retried)
        return self.report


async def send_chunk(
    *,
    settings: Settings,
    engine: Engine,
    campaign_id: str,
    start: int,
    end: int,
    channel: Channel | None = None,
    share: float = 1.0,
) -> ChunkReport:
    """Send the pending messages with seq in [start, end) of a campaign."""
    sender = ChunkSender(
        settings=settings,
        engine=engine,
        campaign_id=campaign_id,
        start=start,
        end=end,
        channel=channel,
        share=share,
    )
    return await sender.run()
