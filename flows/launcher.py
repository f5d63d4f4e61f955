"""The production Launcher: creates and cancels `send-campaign/default` flow runs."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from uuid import UUID

from core.timeutil import as_utc

log = logging.getLogger("campaigns.launcher")
SEND_DEPLOYMENT = "send-campaign/default"
CANCEL_MESSAGE = "cancelled through the campaigns API"


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
        as_subflow: bool = False,
    ) -> str:
        """Create the campaign's flow run once (idempotency key = campaign id)."""
        from prefect.deployments.flow_runs import arun_deployment

        async def _create() -> str:
            flow_run = await arun_deployment(
                SEND_DEPLOYMENT,
                parameters={"campaign_id": campaign_id},
                scheduled_time=as_utc(scheduled_at) if scheduled_at else None,
                flow_run_name=campaign_id,
                tags=[f"channel:{channel}", f"account:{account_id}"],
                idempotency_key=key or campaign_id,
                timeout=0,
                as_subflow=as_subflow,
            )
            return str(flow_run.id)

        return str(await self._retry(f"creating the flow run of {campaign_id}", _create))

    async def cancel(self, *, flow_run_id: str) -> None:
        """Cancel a flow run: straight to Cancelled before it runs, Cancelling while it runs."""
        from prefect import get_client
        from prefect.client.schemas.objects import StateType
        from prefect.states import Cancelled, Cancelling

        async def _cancel() -> None:
            async with get_client() as client:
                flow_run = await client.read_flow_run(UUID(flow_run_id))
                state_type = flow_run.state.type if flow_run.state else None
                if state_type in (StateType.SCHEDULED, StateType.PENDING, StateType.PAUSED):
                    await client.set_flow_run_state(
                        UUID(flow_run_id),
                        Cancelled(message=CANCEL_MESSAGE),
                        force=True,
                    )
                elif state_type == StateType.RUNNING:
                    await client.set_flow_run_state(UUID(flow_run_id), Cancelling(message=CANCEL_MESSAGE))

        await self._retry(f"cancelling flow run {flow_run_id}", _cancel)

    async def healthy(self) -> bool:
        """True if the Prefect API answers its health check."""
        from prefect import get_client

        try:
            async with get_client() as client:
                return (await client.api_healthcheck()) is None
        except Exception:
            return False
