"""Delivery of one message: pacing, the stop check before every request, transient retries
with backoff (honouring Retry-After), and lost answers resolved with the provider's lookup;
`MeteredChannel` counts and times every provider request.

Nothing here touches the database: the sender pool records what `deliver` returns."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from time import perf_counter

from channels.base import (
    Channel,
    OutboundMessage,
    PermanentSendError,
    ProviderConfigError,
    SendResult,
    StatusUpdate,
    TransientSendError,
    UnknownOutcomeError,
)
from core import metrics
from core.ledger import Outcome
from core.pacing import Pacer
from core.timeutil import as_utc, utcnow
from models import ErrorCode, MessageStatus

log = logging.getLogger("campaigns.delivery")


def request_outcome(exc: BaseException) -> str:
    """The `outcome` label of a provider request that raised."""
    if isinstance(exc, PermanentSendError):
        return "rejected"
    if isinstance(exc, TransientSendError):
        return "retryable"
    if isinstance(exc, UnknownOutcomeError | asyncio.CancelledError):
        return "unknown"  # the request may have reached the provider
    if isinstance(exc, ProviderConfigError):
        return "config_error"
    return "error"


class MeteredChannel:
    """A channel whose requests are counted (campaigns_provider_requests_total, outcome
    accepted / rejected / retryable / unknown / config_error / error; `lookup` for an answered
    status or sent-message lookup) and timed, in the process's accumulator: a few dict
    increments per request."""

    def __init__(
        self, channel: Channel, provider: str, accumulator: metrics.Accumulator | None = None
    ) -> None:
        self.inner, self.provider = channel, provider
        self.name = channel.name
        self.default_rate_per_second = channel.default_rate_per_second
        self.default_concurrency = channel.default_concurrency
        self.supports_status_lookup = channel.supports_status_lookup
        self.sent_lookup_delay_s = channel.sent_lookup_delay_s
        self.receipts_pushed: bool = getattr(channel, "receipts_pushed", False)
        self._record = (accumulator or metrics.default).provider_request

    async def open(self) -> None:
        """Open the adapter."""
        await self.inner.open()

    async def close(self) -> None:
        """Close the adapter."""
        await self.inner.close()

    async def send(self, message: OutboundMessage) -> SendResult:
        """The adapter's send, counted and timed."""
        started = perf_counter()
        try:
            result = await self.inner.send(message)
        except BaseException as exc:
            self._record(self.provider, request_outcome(exc), perf_counter() - started)
            raise
        self._record(self.provider, "accepted", perf_counter() - started)
        return result

    async def fetch_status(self, provider_message_id: str, sent_at: datetime | None) -> StatusUpdate | None:
        """The adapter's status lookup, counted and timed."""
        started = perf_counter()
        try:
            found = await self.inner.fetch_status(provider_message_id, sent_at)
        except BaseException as exc:
            self._record(self.provider, request_outcome(exc), perf_counter() - started)
            raise
        self._record(self.provider, "lookup", perf_counter() - started)
        return found

    async def find_sent(self, message: OutboundMessage, since: datetime) -> list[SendResult]:
        """The adapter's sent-message lookup, counted and timed."""
        started = perf_counter()
        try:
            found = await self.inner.find_sent(message, since)
        except BaseException as exc:
            self._record(self.provider, request_outcome(exc), perf_counter() - started)
            raise
        self._record(self.provider, "lookup", perf_counter() - started)
        return found


class Stopped(Exception):
    """The campaign stopped (paused, cancelled, lease lost) before this message went out."""


@dataclass(frozen=True)
class RetryPolicy:
    """How long transient errors are retried, and the longest backoff between tries."""

    window_s: float
    max_backoff_s: float

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter, never shorter than the provider's Retry-After."""
        jittered = min(self.max_backoff_s, 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
        return max(retry_after or 0.0, jittered)


async def look_up(
    channel: Channel,
    message: OutboundMessage,
    since: datetime,
    policy: RetryPolicy,
    taken: Callable[[list[str]], Awaitable[set[str]]] | None = None,
) -> SendResult | None:
    """After a request whose answer was lost (made at `since`): the provider's record of it, or
    None if the provider is sure it never got it. Waits out the provider's visibility delay;
    raises UnknownOutcomeError if the lookup cannot tell within the retry window. `taken` names
    provider ids other messages already own (never the same message twice)."""
    delay = channel.sent_lookup_delay_s
    if delay is None:
        raise UnknownOutcomeError("the provider cannot be asked whether it got this message")
    wait = (as_utc(since) + timedelta(seconds=delay) - utcnow()).total_seconds()
    if wait > 0:
        await asyncio.sleep(wait)
    deadline = time.monotonic() + policy.window_s
    attempt = 0
    while True:
        try:
            found = await channel.find_sent(message, since - timedelta(seconds=1))
            break
        except TransientSendError as exc:
            attempt += 1
            delay_s = policy.backoff(attempt, exc.retry_after)
            if time.monotonic() + delay_s > deadline:
                raise UnknownOutcomeError(f"the provider's lookup failed: {exc.message}") from exc
            await asyncio.sleep(delay_s)
    owned = await taken([f.provider_message_id for f in found]) if taken and found else set()
    return next((f for f in found if f.provider_message_id not in owned), None)


async def deliver(
    channel: Channel,
    pacer: Pacer,
    message: OutboundMessage,
    policy: RetryPolicy,
    *,
    may_send: Callable[[], bool],
    on_request: Callable[[], None],
) -> SendResult:
    """Send until accepted, rejected or out of retry window. Raises Stopped (nothing went out,
    hand it back), PermanentSendError, TransientSendError (window exceeded), UnknownOutcomeError
    (maybe sent, cannot be told) and ProviderConfigError (refused before sending)."""
    deadline = time.monotonic() + policy.window_s
    attempt = 0
    unanswered: datetime | None = None  # when a request went out without an answer
    while True:
        await pacer.acquire()
        if unanswered is not None:
            found = await look_up(channel, message, unanswered, policy)
            if found is not None:
                return found
            unanswered = None  # the provider never got it: safe to send again, or to hand back
        if not may_send():
            raise Stopped
        on_request()
        started = utcnow()
        try:
            return await channel.send(message)
        except UnknownOutcomeError:
            if channel.sent_lookup_delay_s is None:
                raise
            unanswered = started
        except TransientSendError as exc:
            attempt += 1
            delay = policy.backoff(attempt, exc.retry_after)
            if exc.retry_after:
                pacer.pause(exc.retry_after)
            if time.monotonic() + delay > deadline:
                raise
            await asyncio.sleep(delay)


async def outcome_of(
    channel: Channel,
    pacer: Pacer,
    message: OutboundMessage,
    contact_id: str,
    policy: RetryPolicy,
    *,
    may_send: Callable[[], bool],
    on_request: Callable[[], None],
) -> Outcome:
    """deliver(), with every result but Stopped and ProviderConfigError turned into the
    message's outcome. A bug on one message fails that message, not the chunk."""
    requested = False

    def requesting() -> None:
        nonlocal requested
        requested = True
        on_request()

    try:
        result = await deliver(channel, pacer, message, policy, may_send=may_send, on_request=requesting)
        return Outcome(message.message_id, contact_id, result.status, result.provider_message_id)
    except (Stopped, ProviderConfigError):
        raise
    except PermanentSendError as exc:
        return failed(message, contact_id, exc.code or "rejected", exc.message, opt_out=exc.opt_out)
    except UnknownOutcomeError as exc:
        return failed(message, contact_id, ErrorCode.outcome_unknown, exc.message, retryable=True)
    except TransientSendError as exc:
        text = f"gave up after the retry window: {exc.message}"
        return failed(message, contact_id, exc.code or ErrorCode.retry_window_exceeded, text, retryable=True)
    except Exception:
        log.exception(
            "internal error sending message %s of campaign %s", message.message_id, message.campaign_id
        )
        # Before its request it is safe to try again; after it, it may have been sent.
        return failed(
            message, contact_id, ErrorCode.internal_error, "internal error", retryable=not requested
        )


def failed(
    message: OutboundMessage,
    contact_id: str,
    code: str,
    text: str,
    *,
    opt_out: bool = False,
    retryable: bool = False,
) -> Outcome:
    """A failed outcome."""
    return Outcome(
        message.message_id,
        contact_id,
        MessageStatus.failed,
        error_code=code,
        error_message=text[:1000],
        opt_out=opt_out,
        retryable=retryable,
    )
