"""Send attempts and their leases: an attempt holds the messages it claimed only while its
lease lives. It renews the lease several times a second (reporting the campaign's control
version it has seen), and a pause or cancel answers once every live attempt has seen it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, select, update
from sqlmodel import Session, col

from core.ids import new_id
from core.timeutil import utcnow
from models import Campaign, SendAttempt

# An attempt that has not renewed its lease for this long is dead (it renews every 0.25 s).
LEASE_S = 20.0
# An attempt that renewed within this long is actively watching its campaign.
ACTIVE_S = 2.0


@dataclass(frozen=True)
class Watch:
    """A lease renewal: is the attempt still alive, and what is its campaign doing."""

    alive: bool
    status: str
    version: int


def begin_attempt(
    session: Session, *, campaign_id: str, start: int, end: int, flow_run_id: str | None
) -> str:
    """A new attempt on the seq range [start, end) with a fresh lease; returns its id."""
    now = utcnow()
    attempt = SendAttempt(
        id=new_id("att"),
        campaign_id=campaign_id,
        seq_start=start,
        seq_end=end,
        flow_run_id=flow_run_id,
        started_at=now,
        renewed_at=now,
        expires_at=now + timedelta(seconds=LEASE_S),
    )
    session.add(attempt)
    return attempt.id


def renew(session: Session, *, attempt_id: str, campaign_id: str) -> Watch:
    """Extend the lease (unless it already expired or ended: then the attempt must stop) and
    report the campaign's status and the control version this attempt has now seen."""
    now = utcnow()
    status, version = session.execute(
        select(col(Campaign.status), col(Campaign.control_version)).where(col(Campaign.id) == campaign_id)
    ).one()
    result = session.execute(
        update(SendAttempt)
        .where(
            col(SendAttempt.id) == attempt_id,
            col(SendAttempt.ended_at).is_(None),
            col(SendAttempt.expires_at) >= now,
        )
        .values(renewed_at=now, expires_at=now + timedelta(seconds=LEASE_S), seen_version=version)
    )
    return Watch(alive=result.rowcount == 1, status=status, version=version)  # type: ignore[attr-defined]


def end_attempt(session: Session, *, attempt_id: str) -> None:
    """The attempt stopped (its unsent rows were handed back)."""
    session.execute(update(SendAttempt).where(col(SendAttempt.id) == attempt_id).values(ended_at=utcnow()))


def end_attempts_of_run(session: Session, *, flow_run_id: str) -> int:
    """The process of a flow run is gone (its runner saw it exit): its leases end at once."""
    result = session.execute(
        update(SendAttempt)
        .where(col(SendAttempt.flow_run_id) == flow_run_id, col(SendAttempt.ended_at).is_(None))
        .values(ended_at=utcnow())
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def live_filter(campaign_id: str, now: datetime) -> Any:
    return (
        col(SendAttempt.campaign_id) == campaign_id,
        col(SendAttempt.ended_at).is_(None),
        col(SendAttempt.expires_at) >= now,
    )


def live_attempts(session: Session, *, campaign_id: str) -> list[SendAttempt]:
    """The attempts of a campaign whose lease is alive."""
    return list(session.execute(select(SendAttempt).where(*live_filter(campaign_id, utcnow()))).scalars())


def unaware_attempts(session: Session, *, campaign_id: str, version: int) -> int:
    """Live attempts that renewed lately but have not seen control `version` yet (a pause or
    cancel answers once this is 0: from then on no new request of the campaign starts)."""
    now = utcnow()
    return int(
        session.execute(
            select(func.count()).where(
                *live_filter(campaign_id, now),
                col(SendAttempt.seen_version) < version,
                col(SendAttempt.renewed_at) >= now - timedelta(seconds=ACTIVE_S),
            )
        ).scalar_one()
    )


def has_live_attempts(session: Session, *, campaign_id: str) -> bool:
    """True while some attempt may still send for this campaign."""
    return bool(session.execute(select(exists().where(*live_filter(campaign_id, utcnow())))).scalar())
