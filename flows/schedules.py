"""The production Scheduler: schedules of the deployment launch-campaign/default in Prefect.

Each schedule carries its campaign as the schedule's own parameters and our sch_ id as its
slug, so operators see, pause and edit it in the Prefect UI, and re-serving the deployment
(which sends no schedules: deployments/worker.py) leaves it alone."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any
from uuid import UUID

from core.errors import Unavailable
from core.schedules import Planned, Timing
from core.timeutil import as_utc, utcnow

log = logging.getLogger("campaigns.schedules")
LAUNCH_DEPLOYMENT = "launch-campaign/default"
SLUG_PREFIX = "sch_"


def prefect_schedule(timing: Timing) -> Any:
    """The Prefect schedule object of a timing."""
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

    if timing.cron is not None:
        return CronSchedule(cron=timing.cron, timezone=timing.timezone)
    assert timing.interval_seconds is not None
    return IntervalSchedule(
        interval=timedelta(seconds=timing.interval_seconds),
        anchor_date=as_utc(timing.anchor or utcnow()),
        timezone=timing.timezone,
    )


def timing_of(schedule: Any) -> Timing | None:
    """Our timing of a Prefect schedule (None for an rrule: not one of ours)."""
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

    if isinstance(schedule, CronSchedule):
        return Timing(cron=schedule.cron, interval_seconds=None, timezone=schedule.timezone or "UTC")
    if isinstance(schedule, IntervalSchedule):
        return Timing(
            cron=None,
            interval_seconds=int(schedule.interval.total_seconds()),
            timezone=schedule.timezone or "UTC",
            anchor=schedule.anchor_date,
        )
    return None


async def next_run_at(schedule: Any) -> Any:
    """The next firing as Prefect's scheduler computes it (its server-side schedule model)."""
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.server.schemas import schedules as server_schedules

    kind: Any = (
        server_schedules.CronSchedule
        if isinstance(schedule, CronSchedule)
        else server_schedules.IntervalSchedule
    )
    dates = await kind.model_validate(schedule.model_dump()).get_dates(n=1, start=as_utc(utcnow()))
    return dates[0] if dates else None


class PrefectScheduler:
    """Talks to the Prefect API (PREFECT_API_URL); any failure to reach it is Unavailable."""

    def __init__(self) -> None:
        self._deployment_id: UUID | None = None

    async def _deployment(self, client: Any) -> UUID:
        from prefect.exceptions import ObjectNotFound

        if self._deployment_id is None:
            try:
                deployment = await client.read_deployment_by_name(LAUNCH_DEPLOYMENT)
            except ObjectNotFound:
                raise Unavailable(
                    f"the deployment {LAUNCH_DEPLOYMENT} is not registered yet: start `campaigns worker`"
                ) from None
            self._deployment_id = deployment.id
        return self._deployment_id

    async def _call(self, what: str, fn: Any) -> Any:
        """Run fn(client, deployment_id); a 503 from a busy SQLite server is retried."""
        from prefect import get_client
        from prefect.exceptions import ObjectNotFound

        for attempt in range(3):
            try:
                async with get_client() as client:
                    return await fn(client, await self._deployment(client))
            except Unavailable:
                raise
            except ObjectNotFound:
                self._deployment_id = None  # the deployment was deleted and registered again
                if attempt == 2:
                    raise Unavailable(f"{what}: {LAUNCH_DEPLOYMENT} not found") from None
            except Exception as exc:
                log.warning("%s failed (%s: %s)", what, exc.__class__.__name__, exc)
                if attempt == 2:
                    raise Unavailable(f"{what}: the Prefect API did not answer") from None
            await asyncio.sleep(0.3 * 2**attempt)
        raise AssertionError("unreachable")

    async def create(self, planned: Planned) -> None:
        from prefect.client.schemas.actions import DeploymentScheduleCreate

        async def _create(client: Any, deployment_id: UUID) -> None:
            existing = await client.read_deployment_schedules(deployment_id)
            if any(s.slug == planned.slug for s in existing):
                return  # a retry of a create that went through
            await client.create_deployment_schedules(
                deployment_id,
                [
                    DeploymentScheduleCreate(
                        schedule=prefect_schedule(planned.timing),
                        active=planned.active,
                        parameters=planned.parameters,
                        slug=planned.slug,
                    )
                ],
            )

        await self._call("creating a schedule", _create)

    async def _schedules(self, client: Any, deployment_id: UUID) -> list[Any]:
        return [
            s
            for s in await client.read_deployment_schedules(deployment_id)
            if s.slug and s.slug.startswith(SLUG_PREFIX)
        ]

    async def read_all(self) -> dict[str, Planned]:
        async def _read(client: Any, deployment_id: UUID) -> dict[str, Planned]:
            out: dict[str, Planned] = {}
            for s in await self._schedules(client, deployment_id):
                timing = timing_of(s.schedule)
                if timing is None:
                    continue
                upcoming = await next_run_at(s.schedule) if s.active else None
                out[s.slug] = Planned(
                    slug=s.slug,
                    timing=timing,
                    active=s.active,
                    parameters=dict(s.parameters or {}),
                    next_run_at=upcoming,
                )
            return out

        return dict(await self._call("reading the schedules", _read))

    async def _by_slug(self, client: Any, deployment_id: UUID, slug: str) -> Any:
        return next((s for s in await self._schedules(client, deployment_id) if s.slug == slug), None)

    async def set_active(self, slug: str, active: bool) -> bool:
        async def _set(client: Any, deployment_id: UUID) -> bool:
            found = await self._by_slug(client, deployment_id, slug)
            if found is None:
                return False
            if found.active != active:
                # Prefect 3.9 empties the parameters of a schedule updated without them.
                await client.update_deployment_schedule(
                    deployment_id, found.id, active=active, parameters=dict(found.parameters or {})
                )
            return True

        return bool(await self._call("pausing or resuming a schedule", _set))

    async def set_parameters(self, slug: str, parameters: dict[str, Any]) -> bool:
        async def _set(client: Any, deployment_id: UUID) -> bool:
            found = await self._by_slug(client, deployment_id, slug)
            if found is None:
                return False
            await client.update_deployment_schedule(deployment_id, found.id, parameters=dict(parameters))
            return True

        return bool(await self._call("restoring a schedule's parameters", _set))

    async def is_active(self, slug: str) -> bool:
        """False if the schedule is paused or gone (a run it planned must not launch)."""

        async def _active(client: Any, deployment_id: UUID) -> bool:
            found = await self._by_slug(client, deployment_id, slug)
            return bool(found is not None and found.active)

        return bool(await self._call("reading a schedule", _active))

    async def delete(self, slug: str) -> bool:
        async def _delete(client: Any, deployment_id: UUID) -> bool:
            found = await self._by_slug(client, deployment_id, slug)
            if found is None:
                return False
            await client.delete_deployment_schedule(deployment_id, found.id)
            return True

        return bool(await self._call("deleting a schedule", _delete))
