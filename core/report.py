"""What an operator reads about a campaign in the Prefect UI: counts by status, progress, the
errors that dominate (with a sample each) and credits, as data and as markdown."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from core import counts, ledger, lifecycle, zones
from core.timeutil import iso_z, utcnow
from models import Campaign, CampaignStatus, Message, MessageStatus

TOP_ERRORS = 5
SAMPLE_CHARS = 160
STATUS_ORDER = ("pending", "sending", "sent", "delivered", "undelivered", "failed")
UNSENT = (MessageStatus.pending, MessageStatus.sending)
FAILED = (MessageStatus.failed, MessageStatus.undelivered)


@dataclass(frozen=True)
class ErrorLine:
    code: str
    count: int
    sample: str
    message_id: str


@dataclass(frozen=True)
class WindowWait:
    """Messages held by quiet hours: their recipients' send window is closed now."""

    window: dict[str, str]
    waiting: int
    next_open: datetime
    next_zone: str

    def sentence(self) -> str:
        return (
            f"{self.waiting:,} messages wait for their recipients' send window "
            f"({self.window['start']}-{self.window['end']} local time); the next opens at "
            f"{iso_z(self.next_open)} ({self.next_zone})"
        )


@dataclass(frozen=True)
class Report:
    campaign_id: str
    name: str
    status: str
    channel: str
    sender: str
    schedule_id: str | None
    failure_reason: str | None
    total: int
    skipped: int
    by_status: dict[str, int]
    credits_used: int
    credits_reserved: int
    errors: list[ErrorLine] = field(default_factory=list)
    waiting: WindowWait | None = None

    @property
    def snapshotted(self) -> bool:
        return sum(self.by_status.values()) > 0

    @property
    def dispatched(self) -> int:
        """Messages that left (accepted, final or failed): no longer pending or in flight."""
        if not self.snapshotted:
            return 0
        return sum(n for s, n in self.by_status.items() if s not in UNSENT)

    @property
    def progress(self) -> float:
        """Dispatched share, in percent."""
        return 100.0 * self.dispatched / self.total if self.total else 100.0

    def key(self) -> tuple[Any, ...]:
        """What changes when the report does (an unchanged one is not written again)."""
        return (
            self.status,
            tuple(sorted(self.by_status.items())),
            self.credits_used,
            self.credits_reserved,
            self.waiting,
        )


def top_errors(session: Session, campaign_id: str, limit: int = TOP_ERRORS) -> list[ErrorLine]:
    """The most frequent error codes of failed messages, each with one sample message."""
    m = Message
    rows = session.exec(
        select(m.error_code, func.count(), func.min(m.id))
        .where(col(m.campaign_id) == campaign_id, col(m.status).in_(FAILED))
        .group_by(col(m.error_code))
        .order_by(func.count().desc(), col(m.error_code))
        .limit(limit)
    ).all()
    lines = []
    for code, n, sample_id in rows:
        sample = session.get(Message, sample_id)
        text = (sample.error_message if sample is not None else None) or ""
        lines.append(ErrorLine(code or "(none)", int(n), text[:SAMPLE_CHARS], str(sample_id)))
    return lines


def window_wait(session: Session, campaign: Campaign) -> WindowWait | None:
    """What quiet hours hold back of a sending campaign right now, if anything."""
    if not campaign.send_window or campaign.status != CampaignStatus.processing:
        return None
    now = utcnow()
    closed = {
        zone: n
        for zone, n in ledger.waiting_zones(session, campaign_id=campaign.id).items()
        if not zones.is_open(campaign.send_window, zone, now)
    }
    if not closed:
        return None
    opens = {zone: zones.next_open(campaign.send_window, zone, now) for zone in closed}
    first = min(opens, key=lambda z: (opens[z], z))
    return WindowWait(dict(campaign.send_window), sum(closed.values()), opens[first], first)


def build(session: Session, campaign_id: str) -> Report:
    """The campaign's report now."""
    c = lifecycle.load(session, campaign_id)
    by_status = counts.campaign_counts(session, [c])[c.id]
    return Report(
        campaign_id=c.id,
        name=c.name,
        status=c.status,
        channel=c.channel,
        sender=c.sender_value,
        schedule_id=c.schedule_id,
        failure_reason=c.failure_reason,
        total=c.total_recipients,
        skipped=c.skipped_count,
        by_status=dict(by_status),
        credits_used=c.credits_used,
        credits_reserved=c.credits_reserved,
        errors=top_errors(session, campaign_id) if any(by_status.get(s, 0) for s in FAILED) else [],
        waiting=window_wait(session, c),
    )


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("`", "'")


def markdown(report: Report) -> str:
    """The report as the markdown artifact shows it."""
    r = report
    facts = [f"**Status:** {r.status}", f"**Channel:** {r.channel}", f"**Sender:** {_cell(r.sender)}"]
    if r.schedule_id:
        facts.append(f"**Schedule:** {r.schedule_id}")
    lines = [f"# {_cell(r.name)} ({r.campaign_id})", "", " · ".join(facts), ""]
    if r.failure_reason:
        lines += [f"**Failure reason:** {_cell(r.failure_reason)}", ""]
    lines += [f"**Dispatched:** {r.dispatched:,} of {r.total:,} ({r.progress:.1f} %)", ""]
    if r.waiting:
        lines += [f"**Quiet hours:** {r.waiting.sentence()}.", ""]
    lines += ["| status | messages |", "|---|---:|"]
    for status in STATUS_ORDER:
        lines.append(f"| {status} | {r.by_status.get(status, 0):,} |")
    failed = sum(r.by_status.get(s, 0) for s in FAILED)
    lines += [
        f"| **failed_count** (undelivered + failed) | **{failed:,}** |",
        f"| skipped (opted out, no address) | {r.skipped:,} |",
        "",
        f"**Credits:** {r.credits_used:,} used · {r.credits_reserved:,} still reserved",
        "",
    ]
    if r.errors:
        lines += ["## Top errors", "", "| error code | messages | sample |", "|---|---:|---|"]
        for e in r.errors:
            lines.append(f"| `{_cell(e.code)}` | {e.count:,} | {_cell(e.sample) or '—'} ({e.message_id}) |")
        lines.append("")
    lines.append(f"_Updated {iso_z(utcnow())}_")
    return "\n".join(lines)


def table(report: Report) -> list[dict[str, Any]]:
    """The summary table (SPEC §3) of a campaign."""
    r = report
    return [
        {"metric": "status", "value": r.status},
        {"metric": "total_recipients", "value": r.total},
        {"metric": "delivered", "value": r.by_status.get("delivered", 0)},
        {"metric": "failed", "value": sum(r.by_status.get(s, 0) for s in FAILED)},
        {"metric": "skipped", "value": r.skipped},
        {"metric": "credits_used", "value": r.credits_used},
    ]
