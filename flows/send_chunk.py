"""Chunks as flow runs: how several workers share one campaign.

With CAMPAIGNS_DISTRIBUTE_CHUNKS=true the campaign's flow run does not send itself. It creates
one flow run of the deployment `send-campaign-chunk/default` per seq range (a sub-flow run in
the UI) and waits for them; every `campaigns worker` polling the Prefect server serves that
deployment, so Prefect hands the chunk runs to whichever workers have room (its
Scheduled→Pending rule lets exactly one worker take a run), each in its own process.

A chunk run whose worker dies is marked Crashed by the zombie automation (its heartbeats stop);
the campaign's run then starts the same range again as a new attempt, which any live worker
takes. The message ledger keeps that exactly once where the provider can tell: the new
attempt claims only `pending` rows, and adopts the rows the dead one had in flight once its
lease has expired (looked up at the provider, or `outcome_unknown` where it has no lookup).
Attempts have idempotency keys `<campaign>:v<control version>:<start>-<end>:<n>`, so a resumed
campaign run finds the chunk runs its predecessor started (still running on another worker, or
done) instead of starting them twice, and a run after a pause and resume starts new ones.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import time
from typing import Any

from prefect import flow, get_client, get_run_logger
from prefect.client.schemas.objects import FlowRun
from prefect.context import get_run_context
from prefect.deployments.flow_runs import arun_deployment

from channels.base import ProviderConfigError
from core import ledger, lifecycle, metrics
from core.db import get_engine, get_read_engine, in_session
from core.lifecycle import FailureReason
from core.logs import campaign_id_var, configure_logging
from core.settings import Settings, get_settings
from tasks.campaign_tasks import send_chunk

CHUNK_FLOW = "send-campaign-chunk"
CHUNK_DEPLOYMENT = f"{CHUNK_FLOW}/default"
WORKER_ENV = "CAMPAIGNS_WORKER_NAME"
POLL_S = 1.0


class ChunkRunFailed(RuntimeError):
    """A chunk run failed (not crashed): the campaign fails with its reason."""


def observe_run(campaign_id: str) -> contextvars.Token[str]:
    """Our log format and metrics flushing in this flow-run process (Prefect's runner started
    it, not our CLI), and the campaign's id on every log line of the run."""
    settings = get_settings()
    configure_logging(settings)
    metrics.flush_in_background(get_engine(settings))
    return campaign_id_var.set(campaign_id)


@flow(name=CHUNK_FLOW, flow_run_name="{campaign_id}-{start}-{end}", log_prints=True, persist_result=False)
async def send_campaign_chunk(
    campaign_id: str, channel: str, start: int, end: int, share: float = 1.0
) -> dict[str, Any]:
    """Send the pending messages with seq in [start, end) of one campaign (one chunk run)."""
    token = observe_run(campaign_id)
    try:
        worker = os.environ.get(WORKER_ENV)
        if worker:
            await _tag_self(f"worker:{worker}")
            get_run_logger().info("chunk %s-%s of %s on worker %s", start, end, campaign_id, worker)
        try:
            report = await send_chunk(campaign_id, channel, start // max(end - start, 1), start, end, share)
        except ProviderConfigError as exc:
            get_run_logger().error("the provider refused our credentials: %s", exc)
            await in_session(
                get_engine(get_settings()),
                lifecycle.fail,
                campaign_id=campaign_id,
                reason=FailureReason.provider_credentials,
            )
            raise
        return {**report, "worker": worker}
    finally:
        campaign_id_var.reset(token)


def chunk_run_size(settings: Settings, total: int) -> int:
    """Messages per chunk run: at most CAMPAIGNS_CHUNK_RUN_SIZE, and as many equal runs as a
    multiple of the runs in flight, so that no wave ends with one process sending alone (every
    run costs a process start, so fewer, bigger runs are cheaper)."""
    in_flight = settings.chunk_concurrency
    runs = max(1, -(-total // settings.chunk_run_size))
    runs = -(-runs // in_flight) * in_flight
    return max(1, -(-total // runs))


async def _tag_self(tag: str) -> None:
    """Record which worker ran this chunk (visible in the UI and to `campaigns` tooling)."""
    try:
        run = get_run_context().flow_run  # type: ignore[union-attr]
        assert run is not None
        async with get_client() as client:
            await client.update_flow_run(run.id, tags=sorted({*run.tags, tag}))
    except Exception as exc:  # a missing tag is not worth failing the chunk for
        get_run_logger().warning("could not tag the chunk run: %s", exc)


async def _unsent(
    settings: Settings, campaign_id: str, start: int, end: int, window: dict[str, str] | None
) -> int:
    """Unsent messages of the range (with a send window: of recipients inside theirs now; the
    others wait for the next round)."""
    engine = get_read_engine(settings)
    zones = await in_session(engine, ledger.open_zones, campaign_id=campaign_id, window=window)
    return int(await in_session(engine, ledger.unsent_in_range, campaign_id, start, end, zones))


async def _sending(settings: Settings, campaign_id: str) -> bool:
    status = await in_session(get_read_engine(settings), lifecycle.status_of, campaign_id)
    return status in ledger.SENDING_STATUSES


async def _wait_final(run_id: Any, start_timeout_s: float) -> FlowRun:
    """Poll the chunk run until its state is final. A run a worker took (Pending) but never
    started within `start_timeout_s` — the worker died in between, so no heartbeat will ever
    mark it — is crashed, to be started again. Scheduled runs just wait for a free worker."""
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    pending_since: float | None = None
    async with get_client() as client:
        while True:
            run = await client.read_flow_run(run_id)
            state = run.state
            if state is not None and state.is_final():
                return run
            if state is not None and state.type == StateType.PENDING:
                now = time.monotonic()
                pending_since = pending_since or now
                if now - pending_since > start_timeout_s:
                    await client.set_flow_run_state(
                        run_id,
                        Crashed(message="the worker that took this chunk run never started it"),
                        force=True,
                    )
            else:
                pending_since = None
            await asyncio.sleep(POLL_S)


async def run_chunk_until_done(
    settings: Settings,
    campaign_id: str,
    channel: str,
    version: int,
    start: int,
    end: int,
    share: float,
    window: dict[str, str] | None = None,
    round_key: str = "",
) -> None:
    """Run one range as chunk flow runs until none of it is unsent (with a send window: none
    of the recipients inside theirs), the campaign stops sending (paused, cancelled, failed),
    or the attempts run out (then the campaign fails). `round_key` tells the rounds of a
    windowed campaign apart (each window opening starts new chunk runs)."""
    logger = get_run_logger()
    for attempt in range(1, settings.chunk_run_attempts + 1):
        if not await _sending(settings, campaign_id):
            return
        run = await arun_deployment(
            CHUNK_DEPLOYMENT,
            parameters={
                "campaign_id": campaign_id,
                "channel": channel,
                "start": start,
                "end": end,
                "share": share,
            },
            timeout=0,
            idempotency_key=f"{campaign_id}:v{version}{round_key}:{start}-{end}:{attempt}",
            tags=["campaigns", f"campaign:{campaign_id}"],
        )
        finished = await _wait_final(run.id, 3 * settings.heartbeat_s)
        state = finished.state
        assert state is not None
        if not await _sending(settings, campaign_id):
            return
        if state.is_completed() and await _unsent(settings, campaign_id, start, end, window) == 0:
            return
        if state.is_failed():
            raise ChunkRunFailed(f"chunk {start}-{end} failed: {state.message}")
        logger.warning(
            "chunk %s-%s of %s ended %s (%s), attempt %s of %s",
            start,
            end,
            campaign_id,
            state.name,
            state.message,
            attempt,
            settings.chunk_run_attempts,
        )
    raise ChunkRunFailed(
        f"chunk {start}-{end} still has unsent messages after {settings.chunk_run_attempts} chunk runs"
    )


async def run_chunks_as_flow_runs(
    settings: Settings,
    campaign_id: str,
    channel: str,
    version: int,
    chunks: list[tuple[int, int]],
    window: dict[str, str] | None = None,
    round_key: str = "",
) -> None:
    """Run every range as chunk flow runs, `chunk_concurrency` at a time, each sending at
    1/`chunk_concurrency` of the sender's rate (together: the sender's rate)."""
    in_flight = max(1, min(settings.chunk_concurrency, len(chunks)))
    semaphore = asyncio.Semaphore(in_flight)

    async def one(start: int, end: int) -> None:
        async with semaphore:
            await run_chunk_until_done(
                settings, campaign_id, channel, version, start, end, 1.0 / in_flight, window, round_key
            )

    await asyncio.gather(*(one(s, e) for s, e in chunks))
