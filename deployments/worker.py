"""`campaigns worker`: serve the deployments with a Prefect Runner, plus the reconciler and the
event webhook delivery (each its own asyncio task)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Any

from core.db import migrate
from core.settings import Settings

log = logging.getLogger("campaigns.worker")


async def build_deployments() -> list[Any]:
    """The deployments, entrypoints by module path so any installed copy can run them."""
    from prefect.types.entrypoint import EntrypointType

    from flows.launch_campaign import launch_campaign
    from flows.send_campaign import send_campaign
    from flows.send_chunk import send_campaign_chunk

    deployments = [
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
            "plus account_id) and run it. Its schedules are recurring campaigns: create them "
            "with POST /v1/schedules (or here, with the campaign as the schedule's parameters).",
            tags=["campaigns"],
        ),
        await send_campaign_chunk.ato_deployment(
            name="default",
            entrypoint_type=EntrypointType.MODULE_PATH,
            description="Send one seq range of a campaign; started by send-campaign when "
            "CAMPAIGNS_DISTRIBUTE_CHUNKS is on, and taken by any worker.",
            tags=["campaigns"],
        ),
    ]
    for deployment in deployments:
        # Registering again must not touch the schedules (recurring campaigns, SPEC §8): an
        # explicit empty list would make Prefect 3.9 delete every schedule unless all have
        # slugs (the UI's have none), and warns that a later release deletes them all.
        # Unset, the update leaves them as they are.
        deployment.model_fields_set.discard("schedules")
    return deployments


ZOMBIE_AUTOMATION = "campaigns: crash zombie flow runs"


async def ensure_zombie_automation(heartbeat_s: int) -> None:
    """Create (once per Prefect server) the automation that marks a run Crashed when its
    heartbeats stop: the runner and the flow killed together run no hook, and without this the
    run would stay Running forever. The reconciler then fails the campaign."""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    try:
        await Automation.aread(name=ZOMBIE_AUTOMATION)
        return
    except ValueError:
        pass
    await Automation(
        name=ZOMBIE_AUTOMATION,
        description="Marks flow runs Crashed when they stop sending heartbeats.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=3 * heartbeat_s),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message="Flow run marked as crashed: its heartbeats stopped (worker killed?).",
            )
        ],
    ).acreate()


async def run_worker(settings: Settings, *, runs: bool = True) -> None:
    """Register the deployments and execute their runs until SIGTERM/SIGINT (`runs=False`:
    only the reconciler and the event webhook delivery, beside Prefect workers of a work pool
    that execute the runs of deployments/prefect.yaml)."""
    from prefect.runner import Runner

    from core.webhook_delivery import deliver_forever
    from deployments.reconciler import reconcile_forever
    from flows.launcher import PrefectLauncher
    from flows.schedules import PrefectScheduler

    migrate(settings)
    try:
        await ensure_zombie_automation(settings.heartbeat_s)
    except Exception:
        log.exception("could not create the zombie-run automation; crashed runs rely on hooks")
    from flows.send_chunk import WORKER_ENV

    name = f"campaigns-{socket.gethostname()}-{os.getpid()}"
    os.environ[WORKER_ENV] = name  # inherited by the flow-run processes (chunk runs tag it)
    background = [
        asyncio.create_task(reconcile_forever(settings, PrefectLauncher(), PrefectScheduler())),
        # Its own task and HTTP client: a slow receiver never holds up sending.
        asyncio.create_task(deliver_forever(settings)),
    ]
    try:
        if not runs:
            await asyncio.gather(*background)
            return
        runner = Runner(
            name=name,
            limit=settings.runner_limit,
            pause_on_shutdown=False,
            heartbeat_seconds=settings.heartbeat_s,
            # "Send now" latency and the pick-up of chunk runs (Prefect's default polls every 10 s).
            query_seconds=float(os.environ.get("PREFECT_RUNNER_POLL_FREQUENCY", "2")),
        )
        for deployment in await build_deployments():
            await runner.aadd_deployment(deployment)
        await runner.start()
    finally:
        for task in background:
            task.cancel()
        for task in background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
