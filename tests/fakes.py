"""A scriptable in-memory channel for dispatch tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

from channels.base import OutboundMessage, SendResult, StatusUpdate


class FakeChannel:
    """Counts every send; `behaviour(message, attempt)` may raise or return a SendResult."""

    name = "sms"
    default_rate_per_second: float | None = None
    default_concurrency = 16
    supports_status_lookup = True
    sent_lookup_delay_s: float | None = None

    def __init__(
        self, behaviour: Callable[[OutboundMessage, int], SendResult | None] | None = None, delay: float = 0.0
    ) -> None:
        self.behaviour = behaviour
        self.delay = delay
        self.sent: list[OutboundMessage] = []
        self.attempts: dict[str, int] = {}
        self.opened = self.closed = 0

    async def open(self) -> None:
        self.opened += 1

    async def close(self) -> None:
        self.closed += 1

    async def send(self, message: OutboundMessage) -> SendResult:
        attempt = self.attempts.get(message.message_id, 0) + 1
        self.attempts[message.message_id] = attempt
        if self.delay:
            await asyncio.sleep(self.delay)
        result = self.behaviour(message, attempt) if self.behaviour else None
        self.sent.append(message)
        return result or SendResult(provider_message_id="p_" + message.message_id)

    async def fetch_status(self, provider_message_id: str, sent_at: datetime | None) -> StatusUpdate | None:
        return StatusUpdate(provider_message_id, "delivered")

    async def find_sent(self, message: OutboundMessage, since: datetime) -> list[SendResult]:
        """What was sent to this recipient with this text (when lookups are switched on)."""
        return [
            SendResult(provider_message_id="p_" + m.message_id)
            for m in reversed(self.sent)
            if m.to == message.to and m.body == message.body
        ]
