"""The channel protocol: what every provider adapter implements.

Adapters never return bool: they return a SendResult or raise one of two errors.
TransientSendError means "try again later" (timeouts, connection errors, 429, 5xx);
PermanentSendError means "this recipient or content will never work" (and is never retried).
Anything else is a bug and propagates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One personalized message, ready for a provider."""

    message_id: str
    campaign_id: str
    to: str
    sender: str
    body: str | None = None
    subject: str | None = None
    template: dict[str, Any] | None = None
    # Email only: the HTML part (multipart/alternative with `body` as the text part) and the
    # recipient's one-click unsubscribe link (List-Unsubscribe + List-Unsubscribe-Post, RFC 8058).
    html: str | None = None
    unsubscribe_url: str | None = None


@dataclass(frozen=True, slots=True)
class SendResult:
    """The provider accepted the message: `status` is `sent` (receipt to follow) or `delivered`."""

    provider_message_id: str
    status: str = "sent"


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """A later status from the provider for one message (poll or webhook)."""

    provider_message_id: str
    status: str
    error_code: str | None = None
    error_message: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class SendError(Exception):
    """Base of the two adapter errors."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# The longest wait a provider's Retry-After can impose on one message (and, through the pacer,
# on its chunk): a few minutes. An hour-long (or garbled) value must not stall a campaign.
MAX_RETRY_AFTER_S = 300.0


def capped_retry_after(seconds: float | None) -> float | None:
    """A provider's Retry-After clamped to 0..MAX_RETRY_AFTER_S (None when absent or NaN)."""
    if seconds is None or math.isnan(seconds):
        return None
    return min(max(0.0, float(seconds)), MAX_RETRY_AFTER_S)


class TransientSendError(SendError):
    """Worth retrying later; `retry_after` (seconds, at most MAX_RETRY_AFTER_S) when the
    provider said how long to wait."""

    def __init__(self, message: str, *, code: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = capped_retry_after(retry_after)


class UnknownOutcomeError(SendError):
    """The request went out and no answer came back (read timeout, dropped connection): the
    provider may have accepted it, so it is never simply sent again. Where the provider can
    list what it sent (`find_sent`), the sender looks first; otherwise the message ends
    `outcome_unknown`."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="outcome_unknown")


class PermanentSendError(SendError):
    """Never retried; `opt_out` when the recipient unsubscribed or blocked the sender."""

    def __init__(self, message: str, *, code: str, opt_out: bool = False) -> None:
        super().__init__(message, code=code)
        self.opt_out = opt_out


@runtime_checkable
class Channel(Protocol):
    """A provider adapter for one channel. Open once per chunk; send concurrently."""

    name: str
    # Pacing defaults that respect the provider's documented limits (None = unlimited).
    default_rate_per_second: float | None
    default_concurrency: int
    # True if fetch_status can resolve `sent` messages to a final status.
    supports_status_lookup: bool
    # Seconds after a send before `find_sent` is sure to see it; None if the provider cannot
    # find a sent message (then an unknown outcome stays `outcome_unknown`).
    sent_lookup_delay_s: float | None

    async def open(self) -> None:
        """Acquire connections (an SMTP session, an HTTP pool)."""

    async def close(self) -> None:
        """Release what open() acquired."""

    async def send(self, message: OutboundMessage) -> SendResult:
        """Send one message or raise TransientSendError / PermanentSendError."""
        ...

    async def fetch_status(self, provider_message_id: str, sent_at: datetime | None) -> StatusUpdate | None:
        """The final status of an accepted message, or None while it is not final yet."""
        ...

    async def find_sent(self, message: OutboundMessage, since: datetime) -> list[SendResult]:
        """The provider's messages that match `message` (recipient, sender, text) created at or
        after `since`, newest first; raises TransientSendError if it cannot tell right now."""
        ...


class NoSentLookup:
    """For providers with no way to list what was sent."""

    sent_lookup_delay_s: float | None = None

    async def find_sent(self, message: OutboundMessage, since: datetime) -> list[SendResult]:
        """Nothing can be found."""
        return []


class ProviderConfigError(Exception):
    """The provider refused our credentials or configuration (not the recipient): every message
    would fail the same way, so the chunk stops and the campaign fails with this reason; the
    messages it held go back to pending for a retry once the configuration is fixed."""
