"""Recurring campaigns (SPEC §8): a schedule of the Prefect deployment launch-campaign/default.

Prefect holds what operators see and edit in its UI: the timing, `active` and the campaign's
fields (the schedule's parameters, which the launch-campaign flow takes). Our table holds the
owner and the name, so an account lists only its own schedules without asking Prefect for
every one. A schedule exists when both do: a row whose Prefect schedule is gone (deleted in the
UI) is not shown; a Prefect schedule without a row (a crash between the two writes) is deleted
when found. The launch flow checks the row, so a run of a deleted schedule creates nothing.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cache
from typing import Any, Protocol

from sqlalchemy import delete
from sqlmodel import Session, col, func, select

from core import campaigns
from core.errors import NotFound, RateLimited, Unavailable, ValidationFailed
from core.ids import new_id
from core.timeutil import iso_z, utcnow
from models import Schedule
from models.schemas import ScheduleCampaign, ScheduleCreate

# The campaign fields a schedule's parameters carry, beside account_id and schedule_id.
CAMPAIGN_FIELDS = (
    "name",
    "channel",
    "contact_list_id",
    "sender_id",
    "body",
    "template",
    "subject",
    "html",
    "send_window",
)


@dataclass(frozen=True)
class Timing:
    """When a schedule fires: a cron read in `timezone`, or every `interval_seconds` from `anchor`."""

    cron: str | None
    interval_seconds: int | None
    timezone: str
    anchor: datetime | None = None


@dataclass(frozen=True)
class Planned:
    """A schedule as the orchestrator holds it (slug = our sch_ id)."""

    slug: str
    timing: Timing
    active: bool
    parameters: dict[str, Any]
    next_run_at: datetime | None = field(default=None, compare=False)


# Fields the launch flow cannot run without: a schedule whose parameters lack them was emptied.
REQUIRED = ("account_id", "name", "channel", "contact_list_id", "sender_id")


def emptied(parameters: dict[str, Any]) -> bool:
    """True if Prefect lost this schedule's campaign (see Schedule.parameters)."""
    return any(parameters.get(name) in (None, "") for name in REQUIRED)


class Scheduler(Protocol):
    """The orchestrator's schedules of launch-campaign/default (Prefect in production)."""

    async def create(self, planned: Planned) -> None:
        """Add a schedule (Unavailable when the orchestrator does not answer)."""
        ...

    async def read_all(self) -> dict[str, Planned]:
        """Every schedule with a sch_ slug, by slug, with its next run."""
        ...

    async def set_active(self, slug: str, active: bool) -> bool:
        """Pause or resume (keeping its parameters); False if there is no such schedule."""
        ...

    async def set_parameters(self, slug: str, parameters: dict[str, Any]) -> bool:
        """Replace a schedule's parameters; False if there is no such schedule."""
        ...

    async def delete(self, slug: str) -> bool:
        """Remove a schedule and its future runs; False if there was none."""
        ...


class NullScheduler:
    """No orchestrator configured (API-only use): schedules cannot be managed."""

    async def create(self, planned: Planned) -> None:
        raise Unavailable("no Prefect server is configured (PREFECT_API_URL): schedules live there")

    async def read_all(self) -> dict[str, Planned]:
        raise Unavailable("no Prefect server is configured (PREFECT_API_URL): schedules live there")

    async def set_active(self, slug: str, active: bool) -> bool:
        raise Unavailable("no Prefect server is configured (PREFECT_API_URL): schedules live there")

    async def set_parameters(self, slug: str, parameters: dict[str, Any]) -> bool:
        raise Unavailable("no Prefect server is configured (PREFECT_API_URL): schedules live there")

    async def delete(self, slug: str) -> bool:
        raise Unavailable("no Prefect server is configured (PREFECT_API_URL): schedules live there")


@cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def check_cron(expression: str) -> str:
    """A standard cron expression (five fields, or a macro such as @daily), as Prefect runs it."""
    from croniter import croniter

    fields = expression.split()
    macro = len(fields) == 1 and expression.startswith("@")
    if not macro and len(fields) != 5:
        raise ValidationFailed(
            f"cron {expression!r} must have five fields (minute hour day month weekday)", {"field": "cron"}
        )
    # croniter also takes "random" (R) and "hashed" (H) fields, which Prefect refuses.
    if not croniter.is_valid(expression) or any(f.upper() in ("R", "H") for f in fields):
        raise ValidationFailed(f"cron {expression!r} is not a valid cron expression", {"field": "cron"})
    return expression


def timing_of(data: ScheduleCreate, *, now: datetime | None = None) -> Timing:
    """The schedule's timing, checked (422 for an unknown time zone or a bad cron)."""
    zone = data.timezone or "UTC"
    if zone not in _zones():
        raise ValidationFailed(
            f"timezone {zone!r} is not an IANA time zone (e.g. 'Europe/Paris')", {"field": "timezone"}
        )
    if data.cron is not None:
        return Timing(cron=check_cron(data.cron), interval_seconds=None, timezone=zone)
    return Timing(
        cron=None,
        interval_seconds=data.interval_seconds,
        timezone=zone,
        anchor=(now or utcnow()).replace(microsecond=0),
    )


def parameters_of(*, account_id: str, schedule_id: str, campaign: ScheduleCampaign) -> dict[str, Any]:
    """The launch-campaign parameters of each run (unset fields left out)."""
    fields = campaign.model_dump(mode="json", exclude_none=True, exclude={"scheduled_at"})
    if campaign.template is not None:
        fields["template"] = campaign.template.to_cloud_api()
    return {"account_id": account_id, "schedule_id": schedule_id, **fields}


def check_campaign(session: Session, *, account_id: str, campaign: ScheduleCampaign) -> None:
    """The checks of a create (404 list, 422 sender and content), without pricing: credits and
    the audience are what each run finds."""
    campaigns.check_campaign(session, account_id=account_id, data=campaign)


# -- the table --


def new_schedule_id() -> str:
    """The id of a new schedule (also its Prefect slug)."""
    return new_id("sch")


# Retry-After of a create over the cap: schedules go away only when deleted.
CAP_RETRY_AFTER_S = 3600


def insert(
    session: Session,
    *,
    schedule_id: str,
    account_id: str,
    name: str,
    parameters: dict[str, Any],
    max_schedules: int | None = None,
) -> Schedule:
    """A new schedule row (before its Prefect schedule exists); RateLimited when the account
    already has `max_schedules`."""
    if max_schedules is not None:
        have = session.exec(
            select(func.count()).select_from(Schedule).where(col(Schedule.account_id) == account_id)
        ).one()
        if have >= max_schedules:
            raise RateLimited(
                f"the account has {have} schedules, at most {max_schedules} are allowed; delete one first",
                retry_after=CAP_RETRY_AFTER_S,
            )
    row = Schedule(
        id=schedule_id, account_id=account_id, name=name, parameters=parameters, created_at=utcnow()
    )
    session.add(row)
    session.flush()
    return row


def get_row(session: Session, *, account_id: str, schedule_id: str) -> Schedule:
    """A schedule row of this account, or NotFound."""
    row = session.get(Schedule, schedule_id)
    if row is None or row.account_id != account_id:
        raise NotFound(f"schedule {schedule_id} not found")
    return row


def exists(session: Session, *, schedule_id: str) -> bool:
    """True while the schedule has not been deleted."""
    return session.get(Schedule, schedule_id) is not None


def list_rows(
    session: Session, *, account_id: str, only: set[str], page: int, per_page: int
) -> tuple[list[Schedule], int]:
    """A page of the account's schedules among `only` (those Prefect has), newest first."""
    filters = [col(Schedule.account_id) == account_id, col(Schedule.id).in_(sorted(only))]
    rows = session.exec(
        select(Schedule)
        .where(*filters)
        .order_by(col(Schedule.created_at).desc(), col(Schedule.id).desc())
        .offset((page - 1) * per_page)
        .limit(per_page)
    ).all()
    total = session.exec(select(func.count()).select_from(Schedule).where(*filters)).one()
    return list(rows), int(total)


def delete_row(session: Session, *, schedule_id: str) -> None:
    """Forget a schedule (its campaigns keep their schedule_id)."""
    session.execute(delete(Schedule).where(col(Schedule.id) == schedule_id))


def rows_by_id(session: Session, ids: set[str]) -> dict[str, Schedule]:
    """The rows of these schedule ids."""
    if not ids:
        return {}
    return {r.id: r for r in session.exec(select(Schedule).where(col(Schedule.id).in_(sorted(ids)))).all()}


@dataclass(frozen=True)
class SyncPlan:
    """What keeps Prefect's schedules and our rows in step (every reconcile pass)."""

    restore: dict[str, dict[str, Any]]  # slug → the parameters Prefect lost
    orphans: set[str]  # Prefect schedules without a row


def sync(session: Session, planned: dict[str, Planned]) -> SyncPlan:
    """Schedules whose parameters Prefect emptied get ours back; an operator's edit in the UI
    becomes our copy; a Prefect schedule without a row is an orphan."""
    rows = rows_by_id(session, set(planned))
    restore: dict[str, dict[str, Any]] = {}
    for slug, p in planned.items():
        row = rows.get(slug)
        if row is None:
            continue
        if emptied(p.parameters):
            restore[slug] = dict(row.parameters)
        elif p.parameters != row.parameters:
            row.parameters = dict(p.parameters)
            session.add(row)
    return SyncPlan(restore, set(planned) - set(rows))


def as_shown(row: Schedule, planned: Planned) -> Planned:
    """The schedule with our copy of its campaign where Prefect emptied it."""
    return replace(planned, parameters=dict(row.parameters)) if emptied(planned.parameters) else planned


def known_ids(session: Session, ids: set[str]) -> set[str]:
    """Which of these schedule ids have a row."""
    if not ids:
        return set()
    return set(session.exec(select(Schedule.id).where(col(Schedule.id).in_(sorted(ids)))).all())


# -- the API object --


def campaign_fields(parameters: dict[str, Any]) -> dict[str, Any]:
    """The campaign part of a schedule, from its parameters."""
    return {name: parameters.get(name) for name in CAMPAIGN_FIELDS}


def schedule_object(row: Schedule, planned: Planned) -> dict[str, Any]:
    """The SPEC schedule object."""
    planned = as_shown(row, planned)
    timing = planned.timing
    return {
        "id": row.id,
        "name": row.name,
        "cron": timing.cron,
        "interval_seconds": timing.interval_seconds,
        "timezone": timing.timezone,
        "active": planned.active,
        "next_run_at": iso_z(planned.next_run_at) if planned.active else None,
        "campaign": campaign_fields(planned.parameters),
        "created_at": iso_z(row.created_at),
    }


def with_active(planned: Planned, active: bool) -> Planned:
    """The same schedule paused or resumed."""
    return replace(planned, active=active)
