"""What one chunk attempt works with: the campaign's content (a plain copy, no session) that
builds each message exactly as it was priced, and the report of what it did."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from channels.base import OutboundMessage
from core import ledger, unsubscribe
from core.db import in_session
from core.ledger import Outcome
from core.lifecycle import load
from core.settings import Settings
from core.unsubscribe import Signer, with_link
from models import Campaign, MessageStatus

FLUSH_EVERY = 250
FLUSH_INTERVAL_S = 0.5


@dataclass
class ChunkReport:
    """What one chunk attempt did."""

    claimed: int = 0
    accepted: int = 0
    delivered: int = 0
    failed: int = 0
    recovered: int = 0
    recovered_unknown: int = 0
    # Claimed, then left unsent because the recipient's send window closed meanwhile.
    held: int = 0
    stopped: bool = False
    errors: dict[str, int] = field(default_factory=dict)

    def count(self, outcome: Outcome) -> None:
        """Add one outcome."""
        if outcome.status == MessageStatus.failed:
            self.failed += 1
            code = outcome.error_code or "unknown"
            self.errors[code] = self.errors.get(code, 0) + 1
        else:
            self.accepted += 1
            if outcome.status == MessageStatus.delivered:
                self.delivered += 1


@dataclass(frozen=True)
class CampaignView:
    """What sending needs to know about a campaign (a plain copy, no session)."""

    id: str
    channel: str
    sender: str
    body: str | None
    subject: str | None
    template: dict[str, Any] | None
    account_id: str = ""
    html: str | None = None
    send_window: dict[str, str] | None = None
    # Signs each email's one-click unsubscribe link (None: no link, e.g. in unit tests).
    signer: Signer | None = None

    @classmethod
    def of(cls, campaign: Campaign, signer: Signer | None = None) -> CampaignView:
        return cls(
            campaign.id,
            campaign.channel,
            campaign.sender_value,
            campaign.body,
            campaign.subject,
            campaign.template,
            account_id=campaign.account_id,
            html=campaign.html,
            send_window=campaign.send_window,
            signer=signer if campaign.channel == "email" else None,
        )

    def message(self, row: dict[str, Any]) -> OutboundMessage:
        """The message exactly as priced: the campaign's content with the row's frozen parts
        (and, for email, the recipient's unsubscribe link)."""
        frozen = row["content"] or {}
        fields = {
            "body": frozen.get("body", self.body),
            "subject": frozen.get("subject", self.subject),
            "html": frozen.get("html", self.html),
        }
        url = None
        if self.signer is not None:
            url = self.signer.url(self.account_id, row["contact_id"])
            fields = with_link(fields, url)
        return OutboundMessage(
            message_id=row["id"],
            campaign_id=self.id,
            to=row["to_address"],
            sender=self.sender,
            body=fields["body"],
            subject=fields["subject"],
            template=frozen.get("template", self.template),
            html=fields["html"],
            unsubscribe_url=url,
        )


def open_view(session: Any, campaign_id: str, settings: Settings | None = None) -> CampaignView | None:
    """The campaign as sending needs it, or None if it is not sending; with `settings`, emails
    carry their unsubscribe links."""
    campaign = load(session, campaign_id)
    if campaign.status not in ledger.SENDING_STATUSES:
        return None
    links = None
    if settings is not None and campaign.channel == "email":
        links = unsubscribe.signer(session, settings)
    return CampaignView.of(campaign, links)


class OutcomeWriter:
    """Outcomes of one attempt, written in bulk every FLUSH_EVERY outcomes and at least every
    FLUSH_INTERVAL_S (so results reach the database soon even when sends are slow)."""

    def __init__(self, engine: Engine, attempt_id: str, channel: str) -> None:
        self.engine, self.attempt_id, self.channel = engine, attempt_id, channel
        self._buffer: list[Outcome] = []
        self._writes: set[asyncio.Future[None]] = set()

    @property
    def full(self) -> bool:
        return len(self._buffer) >= FLUSH_EVERY

    def add(self, outcome: Outcome) -> None:
        self._buffer.append(outcome)

    async def flush(self) -> None:
        """Write what is buffered."""
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        # Shielded: a write cancelled while queued for a thread would never run, and its
        # messages would stay `sending` although the provider has them.
        write = asyncio.ensure_future(
            in_session(
                self.engine, ledger.record, attempt_id=self.attempt_id, channel=self.channel, outcomes=batch
            )
        )
        self._writes.add(write)
        write.add_done_callback(self._writes.discard)
        await asyncio.shield(write)

    async def run(self) -> None:
        """Flush periodically until cancelled."""
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            await self.flush()

    async def drain(self) -> None:
        """Flush, and wait for every write still under way."""
        await self.flush()
        if self._writes:
            await asyncio.gather(*self._writes)
