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
    ) -> str:
        """Create (idempotently, keyed by campaign id) the campaign's flow run; returns its id."""
        ...

    async def cancel(self, *, flow_run_id: str) -> None:
        """Stop the flow run: Cancelled if it has not started, Cancelling if it runs."""
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
    ) -> str:
        raise RuntimeError("no orchestrator configured")

    async def cancel(self, *, flow_run_id: str) -> None:
        return None

    async def healthy(self) -> bool:
        return False
