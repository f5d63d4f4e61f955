"""The production Launcher: creates and cancels `send-campaign/default` flow runs."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

from core.timeutil import as_utc, utcnow

log = logging.getLogger("campaigns.launcher")
SEND_DEPLOYMENT = "send-campaign/default"
CANCEL_MESSAGE = "cancelled through the campaigns API"
PAUSE_MESSAGE = "campaign paused through the campaigns API"


def run_name(campaign_id: str, name: str | None) -> str:
    """'cmp_… · Weekend Sale': the id first (SPEC §3), then what a person recognises."""
    return f"{campaign_id} · {name[:100]}" if name else campaign_id


def run_tags(*, account_id: str, channel: str, schedule_id: str | None) -> list[str]:
    """The tags of a campaign's runs."""
    tags = [f"channel:{channel}", f"account:{account_id}"]
    return [*tags, f"schedule:{schedule_id}"] if schedule_id else tags


def _not_started() -> tuple[Any, ...]:
    from prefect.client.schemas.objects import StateType

    return (StateType.SCHEDULED, StateType.PENDING, StateType.PAUSED)


class PrefectLauncher:
    """Talks to the Prefect API (PREFECT_API_URL). Retries the 503s a SQLite server gives."""

    def __init__(self, attempts: int = 4) -> None:
        self.attempts = attempts
        self._deployment_id: str | None = None

    async def _retry(self, what: str, fn):  # type: ignore[no-untyped-def]
        for attempt in range(1, self.attempts + 1):
            try:
                return await fn()
            except Exception as exc:
                if attempt == self.attempts:
                    raise
                log.warning("%s failed (%s); retrying", what, exc)
                await asyncio.sleep(0.5 * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    async def launch(
        self,
        *,
        campaign_id: str,
        account_id: str,
        channel: str,
        scheduled_at: datetime | None,
        key: str | None = None,
        name: str | None = None,
        schedule_id: str | None = None,
        as_subflow: bool = False,
    ) -> str:
        """Create the campaign's flow run once (idempotency key = campaign id), named after
        the campaign and tagged so the UI filters by account, channel and schedule."""
        from prefect.deployments.flow_runs import arun_deployment

        async def _create() -> str:
            flow_run = await arun_deployment(
                SEND_DEPLOYMENT,
                parameters={"campaign_id": campaign_id},
                scheduled_time=as_utc(scheduled_at) if scheduled_at else None,
                flow_run_name=run_name(campaign_id, name),
                tags=run_tags(account_id=account_id, channel=channel, schedule_id=schedule_id),
                idempotency_key=key or campaign_id,
                timeout=0,
                as_subflow=as_subflow,
            )
            return str(flow_run.id)

        return str(await self._retry(f"creating the flow run of {campaign_id}", _create))

    async def _state_type(self, client: Any, flow_run_id: str) -> Any:
        flow_run = await client.read_flow_run(UUID(flow_run_id))
        return flow_run.state.type if flow_run.state else None

    async def cancel(self, *, flow_run_id: str) -> None:
        """A run that has not started (or is suspended) becomes Cancelled. A running one is left
        to end itself: its senders stop within a fraction of a second and it finishes what was
        in flight (cancelling it in Prefect would kill its process mid-request)."""
        from prefect import get_client
        from prefect.states import Cancelled

        async def _cancel() -> None:
            async with get_client() as client:
                if await self._state_type(client, flow_run_id) in _not_started():
                    await client.set_flow_run_state(
                        UUID(flow_run_id), Cancelled(message=CANCEL_MESSAGE), force=True
                    )

        await self._retry(f"cancelling flow run {flow_run_id}", _cancel)

    async def pause(self, *, flow_run_id: str) -> None:
        """A run that has not started is shown Suspended (no timeout) until it is resumed."""
        from prefect import get_client
        from prefect.client.schemas.objects import StateType
        from prefect.states import Suspended

        async def _pause() -> None:
            async with get_client() as client:
                if await self._state_type(client, flow_run_id) in (StateType.SCHEDULED, StateType.PENDING):
                    await client.set_flow_run_state(
                        UUID(flow_run_id),
                        Suspended(message=PAUSE_MESSAGE, pause_key=str(uuid4())),
                        force=True,
                    )

        await self._retry(f"pausing flow run {flow_run_id}", _pause)

    async def resume(self, *, flow_run_id: str, scheduled_at: datetime | None) -> bool:
        """Resume a paused run: as Prefect's Resume does, or straight to its scheduled time when
        that is ahead. False when Prefect will not resume it (timed out, final)."""
        from prefect import get_client
        from prefect.client.schemas.objects import StateType
        from prefect.client.schemas.responses import SetStateStatus
        from prefect.states import Scheduled

        async def _resume() -> bool:
            async with get_client() as client:
                flow_run = await client.read_flow_run(UUID(flow_run_id))
                state = flow_run.state
                if state is None or state.is_final():
                    return False
                if state.type != StateType.PAUSED:
                    return True  # still running: it notices the resume itself
                if scheduled_at is not None and as_utc(scheduled_at) > utcnow():
                    await client.set_flow_run_state(
                        UUID(flow_run_id), Scheduled(scheduled_time=as_utc(scheduled_at)), force=True
                    )
                    return True
                result = await client.resume_flow_run(UUID(flow_run_id))
                if result.status == SetStateStatus.ACCEPT:
                    return True
                # Resumed by someone else meanwhile (fine), or failed: its pause timed out.
                fresh = (await client.read_flow_run(UUID(flow_run_id))).state
                return fresh is not None and not fresh.is_final() and fresh.type != StateType.PAUSED

        return bool(await self._retry(f"resuming flow run {flow_run_id}", _resume))

    async def reschedule(self, *, flow_run_id: str, scheduled_at: datetime | None) -> None:
        """Move a run that has not started to its new time (None: now)."""
        from prefect import get_client
        from prefect.client.schemas.objects import StateType
        from prefect.states import Scheduled

        when = as_utc(scheduled_at) if scheduled_at else utcnow()

        async def _move() -> None:
            async with get_client() as client:
                if await self._state_type(client, flow_run_id) == StateType.SCHEDULED:
                    await client.set_flow_run_state(
                        UUID(flow_run_id), Scheduled(scheduled_time=when), force=True
                    )

        await self._retry(f"rescheduling flow run {flow_run_id}", _move)

    async def healthy(self) -> bool:
        """True if the Prefect API answers its health check."""
        from prefect import get_client

        try:
            async with get_client() as client:
                return (await client.api_healthcheck()) is None
        except Exception:
            return False
