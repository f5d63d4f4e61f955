"""The built-in simulated provider: accepts and "delivers" with no credentials.

Outcomes are a pure function of the message id, so any process (a retried chunk, the poller in
another flow run) sees the same answer: `failure_rate` of messages are rejected at send,
`undelivered_rate` of the accepted ones end `undelivered`, the rest `delivered` once
`delivery_delay_s` has passed. A few magic addresses always fail, for tests and demos:
`+15005550001` (invalid number, like Twilio's test number), and any address starting with
`invalid` or `fail`.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime

from pydantic import BaseModel

from channels.base import NoSentLookup, OutboundMessage, PermanentSendError, SendResult, StatusUpdate


class SandboxSettings(BaseModel):
    """The in-process simulated provider used by default on every channel."""

    latency_ms: float = 0.0
    failure_rate: float = 0.0
    undelivered_rate: float = 0.0
    delivery_delay_s: float = 0.5


MAGIC_INVALID = frozenset({"+15005550001"})


def _fraction(text: str) -> float:
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class SandboxChannel(NoSentLookup):
    """Simulated provider for any channel."""

    default_rate_per_second: float | None = None
    default_concurrency = 64
    supports_status_lookup = True

    def __init__(self, name: str, settings: SandboxSettings) -> None:
        self.name = name
        self.settings = settings

    async def open(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """Nothing to release."""

    async def send(self, message: OutboundMessage) -> SendResult:
        """Accept the message after the configured latency, or reject it permanently."""
        if self.settings.latency_ms > 0:
            await asyncio.sleep(self.settings.latency_ms / 1000)
        to = message.to.lower()
        if message.to in MAGIC_INVALID or to.startswith(("invalid", "fail")):
            raise PermanentSendError(f"sandbox: invalid recipient {message.to}", code="invalid_recipient")
        if _fraction("reject:" + message.message_id) < self.settings.failure_rate:
            raise PermanentSendError("sandbox: rejected (simulated failure)", code="sandbox_rejected")
        return SendResult(provider_message_id="sbx_" + message.message_id.removeprefix("msg_"))

    async def fetch_status(self, provider_message_id: str, sent_at: datetime | None) -> StatusUpdate | None:
        """Delivered (or undelivered) once the simulated delay has passed."""
        if sent_at is not None:
            sent = sent_at if sent_at.tzinfo else sent_at.replace(tzinfo=UTC)  # naive is UTC
            age = (datetime.now(UTC) - sent).total_seconds()
            if age < self.settings.delivery_delay_s:
                return None
        if _fraction("deliver:" + provider_message_id) < self.settings.undelivered_rate:
            return StatusUpdate(
                provider_message_id,
                "undelivered",
                "sandbox_undelivered",
                "sandbox: handset unreachable (simulated)",
            )
        return StatusUpdate(provider_message_id, "delivered")
