"""`campaigns worker`: serve both deployments with a Prefect Runner, plus the reconciler."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

from core.db import migrate
from core.settings import Settings

log = logging.getLogger("campaigns.worker")


async def build_deployments() -> list[object]:
    """The two deployments, entrypoints by module path so any installed copy can run them."""
    from prefect.types.entrypoint import EntrypointType

    from flows.launch_campaign import launch_campaign
    from flows.send_campaign import send_campaign

    return [
        await send_campaign.ato_deployment(
            name="default",
            entrypoint_type=EntrypointType.MODULE_PATH,
            description="Send one campaign (parameter campaign_id) to its recipients.",
            tags=["campaigns"],
        ),
        await launch_campaign.ato_deployment(
            name="default",
            entrypoint_type=EntrypointType.MODULE_PATH,
            description="Create a campaign from the run form (same fields as POST /v1/campaigns "
            "plus account_id) and run it; schedule this deployment for a "
            "recurring campaign.",
            tags=["campaigns"],
        ),
    ]


async def run_worker(settings: Settings) -> None:
    """Register the deployments and execute their runs until SIGTERM/SIGINT."""
    from prefect.runner import Runner

    from deployments.reconciler import reconcile_forever
    from flows.launcher import PrefectLauncher

    migrate(settings)
    runner = Runner(
        name=f"campaigns-{socket.gethostname()}-{os.getpid()}",
        limit=settings.runner_limit,
        pause_on_shutdown=False,
    )
    for deployment in await build_deployments():
        await runner.aadd_deployment(deployment)  # type: ignore[arg-type]
    reconciler = asyncio.create_task(reconcile_forever(settings, PrefectLauncher()))
    try:
        await runner.start()
    finally:
        reconciler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reconciler
