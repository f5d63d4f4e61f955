"""How the API hands a campaign to the orchestrator (Prefect in production, a fake in tests)."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol


class Launcher(Protocol):
    """Starts and cancels the flow run that carries a campaign."""

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
    ) -> str:
        """Create (idempotently, keyed by campaign id) the campaign's flow run; returns its id.
        `name` (the campaign's) goes into the run's name, `schedule_id` into its tags."""
        ...

    async def cancel(self, *, flow_run_id: str) -> None:
        """Stop a flow run that has not started (a running one ends itself once its campaign
        is cancelled)."""
        ...

    async def pause(self, *, flow_run_id: str) -> None:
        """Show a flow run that has not started as Suspended (a running one suspends itself)."""
        ...

    async def resume(self, *, flow_run_id: str, scheduled_at: datetime | None) -> bool:
        """Resume a suspended flow run (at `scheduled_at` if that is ahead); False if it cannot
        be resumed any more (then the caller starts a new run)."""
        ...

    async def reschedule(self, *, flow_run_id: str, scheduled_at: datetime | None) -> None:
        """Move a flow run that has not started to `scheduled_at` (None: now)."""
        ...

    async def healthy(self) -> bool:
        """True if the orchestrator's API answers."""
        ...


class NullLauncher:
    """No orchestrator here (API-only use): campaigns stay draft and a worker's reconciler
    creates their flow runs; /healthz reports the orchestrator as unreachable."""

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
    ) -> str:
        raise RuntimeError("no orchestrator configured")

    async def cancel(self, *, flow_run_id: str) -> None:
        return None

    async def pause(self, *, flow_run_id: str) -> None:
        return None

    async def resume(self, *, flow_run_id: str, scheduled_at: datetime | None) -> bool:
        return True

    async def reschedule(self, *, flow_run_id: str, scheduled_at: datetime | None) -> None:
        return None

    async def healthy(self) -> bool:
        return False
