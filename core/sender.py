"""The sender pool of one chunk attempt: a fixed set of sender coroutines fed by a prefetching
claim, a flusher that records outcomes in bulk, and a watcher that renews the attempt's lease
and raises the stop flag (pause, cancel, lease lost) that every sender checks before each
provider request.

Reads top to bottom in `run`: load → begin the attempt → resolve orphans of dead attempts →
send (claim, deliver, record) → flush → hand back what never went out → end the attempt."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

from sqlalchemy import Engine

from channels.base import Channel, ProviderConfigError
from core import attempts, ledger, metrics, zones
from core.channels import build_channel
from core.chunk import CampaignView, ChunkReport, OutcomeWriter, open_view
from core.db import in_session
from core.delivery import MeteredChannel, RetryPolicy, Stopped, failed, look_up, outcome_of
from core.ledger import Outcome
from core.pacing import Pacer, pacer_for
from core.settings import Settings
from core.timeutil import utcnow
from models import ErrorCode

log = logging.getLogger("campaigns.sender")
CLAIM_BATCH = 500
# The stop flag is refreshed from the database this often (a pause or cancel answers only once
# every live attempt has seen it).
WATCH_S = 0.25
# Stop sending this long before our lease could expire in another process's eyes.
LEASE_MARGIN_S = 5.0


class ChunkSender:
    """Sends the messages of one seq range [start, end) of a campaign, as one attempt."""

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
        flow_run_id: str | None = None,
    ) -> None:
        self.settings, self.engine = settings, engine
        self.campaign_id, self.start, self.end = campaign_id, start, end
        self.channel_override = channel
        # This attempt's part of the sender's rate and concurrency when several processes send
        # one campaign at once (1/number of chunk runs in flight): together they keep the limits.
        self.share = min(1.0, max(share, 1e-6))
        self.flow_run_id = flow_run_id
        self.policy = RetryPolicy(settings.delivery.retry_window_s, settings.delivery.max_backoff_s)
        self.report = ChunkReport()
        self.attempt_id = ""
        self.stop = asyncio.Event()
        self.lease_until = 0.0
        # Claimed rows whose request has not gone out: handed back to pending if we stop.
        self._unsent: set[str] = set()
        self._queue: deque[dict[str, Any]] = deque()
        self._claiming: asyncio.Task[None] | None = None
        self._exhausted = False
        self._failure: BaseException | None = None
        self._channel_name = ""
        # Quiet hours: the campaign's send window, its recipients' zones, and claimed rows whose
        # window closed before they went out (handed back as pending; the flow waits for them).
        self._window: dict[str, str] | None = None
        self._zones: list[str] = []
        self._held: set[str] = set()

    def _db(self, fn: Any, /, **kwargs: Any) -> Any:
        return in_session(self.engine, fn, **kwargs)

    def may_send(self) -> bool:
        """Checked before every provider request: not stopped, and our lease surely alive."""
        return not self.stop.is_set() and time.monotonic() < self.lease_until

    async def run(self) -> ChunkReport:
        """Send every pending message of the range; stops early on pause or cancel."""
        view = await in_session(self.engine, open_view, self.campaign_id, settings=self.settings)
        if view is None:
            self.report.stopped = True
            return self.report
        self._channel_name = view.channel
        if view.send_window:
            self._window = view.send_window
            self._zones = list(await self._db(ledger.waiting_zones, campaign_id=self.campaign_id))
        provider = self.settings.channel(view.channel).provider
        channel = MeteredChannel(
            self.channel_override or build_channel(view.channel, self.settings), provider
        )
        pacer, concurrency = self._pacing(view, channel)
        self.attempt_id = await self._db(
            attempts.begin_attempt,
            campaign_id=self.campaign_id,
            start=self.start,
            end=self.end,
            flow_run_id=self.flow_run_id,
        )
        self.lease_until = time.monotonic() + attempts.LEASE_S - LEASE_MARGIN_S
        watcher = asyncio.create_task(self._watch())
        self.writer = OutcomeWriter(self.engine, self.attempt_id, view.channel)
        flusher = asyncio.create_task(self.writer.run())
        senders: list[asyncio.Task[None]] = []
        try:
            await channel.open()
            await self._resolve_orphans(channel, pacer, view, concurrency)
            claim_batch = min(CLAIM_BATCH, max(32, 4 * concurrency))
            senders = [
                asyncio.create_task(self._sender(channel, pacer, view, claim_batch))
                for _ in range(concurrency)
            ]
            await asyncio.gather(*senders, return_exceptions=True)
            if self._failure is not None:
                raise self._failure
        finally:
            await self._wind_down(senders, flusher, watcher)
            await channel.close()
        self.report.stopped = self.report.stopped or self.stop.is_set()
        return self.report

    def _pacing(self, view: CampaignView, channel: Channel) -> tuple[Pacer, int]:
        config = self.settings.channel(view.channel)
        rate = (
            config.rate_per_second if config.rate_per_second is not None else channel.default_rate_per_second
        )
        concurrency = max(1, round((config.concurrency or channel.default_concurrency) * self.share))
        pacer = pacer_for(view.channel, view.sender, rate * self.share if rate else rate, concurrency)
        return pacer, concurrency

    # -- the watcher: lease and stop flag --

    async def _watch(self) -> None:
        while True:
            try:
                started = time.monotonic()
                watch = await self._db(
                    attempts.renew, attempt_id=self.attempt_id, campaign_id=self.campaign_id
                )
                if watch.alive:
                    self.lease_until = started + attempts.LEASE_S - LEASE_MARGIN_S
                if not watch.alive or watch.status not in ledger.SENDING_STATUSES:
                    if not self.stop.is_set():
                        log.info(
                            "chunk %s-%s of %s stops (%s)",
                            self.start,
                            self.end,
                            self.campaign_id,
                            watch.status,
                        )
                    self.stop.set()
            except Exception as exc:  # the lease margin stops sends if this keeps failing
                log.warning("lease of attempt %s not renewed: %s", self.attempt_id, exc)
            await asyncio.sleep(WATCH_S)

    # -- orphans of dead attempts --

    async def _resolve_orphans(
        self, channel: Channel, pacer: Pacer, view: CampaignView, concurrency: int
    ) -> None:
        rows = await self._db(
            ledger.adopt_orphans,
            attempt_id=self.attempt_id,
            campaign_id=self.campaign_id,
            start=self.start,
            end=self.end,
            channel=view.channel,
        )
        if not rows:
            return
        log.info("attempt %s resolves %s orphaned messages", self.attempt_id, len(rows))
        limit = asyncio.Semaphore(concurrency)

        async def resolve(row: dict[str, Any]) -> None:
            message = view.message(row)
            async with limit:
                try:
                    found = await look_up(channel, message, row["updated_at"], self.policy, self._taken)
                except Exception as exc:  # no lookup, or it could not tell: never resent
                    text = getattr(exc, "message", "") or "the outcome of an earlier attempt is unknown"
                    self._add(
                        failed(message, row["contact_id"], ErrorCode.outcome_unknown, text, retryable=True)
                    )
                    self.report.recovered_unknown += 1
                    return
            if found is None:  # the provider never got it: it goes out once, now
                self._unsent.add(row["id"])
                self._queue.append(row)
            else:
                self._add(Outcome(row["id"], row["contact_id"], found.status, found.provider_message_id))
                self.report.recovered += 1

        await asyncio.gather(*(resolve(row) for row in rows))

    async def _taken(self, provider_ids: list[str]) -> set[str]:
        return set(await in_session(self.engine, ledger.known_provider_ids, provider_ids))

    # -- claiming, sending, recording --

    def _open_zones(self) -> list[str] | None:
        """The zones whose send window is open now (None: the campaign has no window)."""
        if self._window is None:
            return None
        now = utcnow()
        return [z for z in self._zones if zones.is_open(self._window, z, now)]

    def _outside_window(self, row: dict[str, Any]) -> bool:
        return self._window is not None and not zones.is_open(self._window, row["zone"] or "UTC", utcnow())

    async def _refill(self, limit: int) -> None:
        rows = await self._db(
            ledger.claim,
            attempt_id=self.attempt_id,
            campaign_id=self.campaign_id,
            start=self.start,
            end=self.end,
            limit=limit,
            channel=self._channel_name,
            zones=self._open_zones(),
        )
        if rows is None:  # no longer sending: what is claimed goes back unsent
            self.stop.set()
            self._exhausted = True
        elif not rows:
            self._exhausted = True
        else:
            self.report.claimed += len(rows)
            self._unsent.update(row["id"] for row in rows)
            self._queue.extend(rows)

    async def _next_row(self, claim_batch: int) -> dict[str, Any] | None:
        # One claim at a time, started before the queue runs dry so sends never wait on it.
        while self._failure is None and not self.stop.is_set():
            if self._claiming is not None and self._claiming.done():
                finished, self._claiming = self._claiming, None
                finished.result()  # a claim that failed (database error) fails the chunk
            if len(self._queue) < claim_batch // 2 and not self._exhausted and self._claiming is None:
                self._claiming = asyncio.create_task(self._refill(claim_batch))
            if self._queue:
                return self._queue.popleft()
            if self._claiming is None:
                return None  # exhausted and drained
            await asyncio.wait({self._claiming})
        return None

    async def _sender(self, channel: Channel, pacer: Pacer, view: CampaignView, claim_batch: int) -> None:
        # A fixed pool of senders (not a task per message) is the concurrency cap per chunk; the
        # pacer's semaphore caps every chunk of one sender sharing this process.
        try:
            while (row := await self._next_row(claim_batch)) is not None:
                async with pacer.semaphore:
                    await self._send_one(channel, pacer, view, row)
                if self.writer.full:
                    await self.writer.flush()
        except BaseException as exc:  # config error or database failure: stop every sender
            if self._failure is None:
                self._failure = exc
            self.stop.set()
            raise

    async def _send_one(
        self, channel: Channel, pacer: Pacer, view: CampaignView, row: dict[str, Any]
    ) -> None:
        if self._outside_window(row):  # its window closed since the claim: it waits, unsent
            self._unsent.discard(row["id"])
            self._held.add(row["id"])
            return
        message = view.message(row)
        if row["unsubscribed_at"] is not None or row["channel_opt_out"] is not None:
            self._unsent.discard(row["id"])  # decided here: never handed back as pending
            self._add(
                failed(message, row["contact_id"], ErrorCode.opted_out, "contact opted out before sending")
            )
            return
        may_send = self.may_send
        if self._window is not None:  # checked again before every request: pacing and retries wait

            def may_send() -> bool:
                return self.may_send() and not self._outside_window(row)

        try:
            outcome = await outcome_of(
                channel,
                pacer,
                message,
                row["contact_id"],
                self.policy,
                may_send=may_send,
                on_request=lambda: self._unsent.discard(row["id"]),
            )
        except Stopped:
            # deliver() stops only while the provider does not have the message (before its
            # first request, or after an answer that refused it): it is handed back, also when
            # a 429's wait was under way.
            if self._outside_window(row):
                self._unsent.discard(row["id"])  # its window closed meanwhile: it waits
                self._held.add(row["id"])
            else:
                self._unsent.add(row["id"])
            return
        except ProviderConfigError:
            self._unsent.add(row["id"])  # refused before sending: handed back too
            raise
        self._add(outcome)

    def _add(self, outcome: Outcome) -> None:
        self.report.count(outcome)
        self.writer.add(outcome)

    async def _wind_down(
        self, senders: list[asyncio.Task[None]], flusher: asyncio.Task[None], watcher: asyncio.Task[None]
    ) -> None:
        for task in senders:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        if self._claiming is not None:
            await asyncio.gather(self._claiming, return_exceptions=True)
        flusher.cancel()
        await asyncio.gather(flusher, return_exceptions=True)
        try:
            await self.writer.drain()  # recorded outcomes first, then hand back what never went out
            if self._unsent:
                self.report.stopped = True
                await self._db(ledger.unclaim, attempt_id=self.attempt_id, message_ids=list(self._unsent))
            if self._held:
                self.report.held += len(self._held)
                await self._db(ledger.unclaim, attempt_id=self.attempt_id, message_ids=list(self._held))
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            with contextlib.suppress(Exception):  # an unended lease simply expires
                await self._db(attempts.end_attempt, attempt_id=self.attempt_id)


async def send_chunk(
    *,
    settings: Settings,
    engine: Engine,
    campaign_id: str,
    start: int,
    end: int,
    channel: Channel | None = None,
    share: float = 1.0,
    flow_run_id: str | None = None,
) -> ChunkReport:
    """Send the pending messages with seq in [start, end) of a campaign (one attempt)."""
    sender = ChunkSender(
        settings=settings,
        engine=engine,
        campaign_id=campaign_id,
        start=start,
        end=end,
        channel=channel,
        share=share,
        flow_run_id=flow_run_id,
    )
    try:
        return await sender.run()
    finally:  # this chunk's provider requests, counted before the chunk reports done
        await asyncio.to_thread(metrics.default.try_flush, engine)
