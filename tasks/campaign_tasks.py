"""The tasks of the send-campaign flow, each a few lines over one core function. Ids cross task
boundaries; each task opens its own database session. Chunks, not messages, are task runs."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context
from prefect.tasks import exponential_backoff

from channels.base import ProviderConfigError
from core import ledger, lifecycle, metrics, snapshot, tracking
from core.channels import build_channel
from core.db import get_engine, get_read_engine, in_session
from core.delivery import MeteredChannel
from core.errors import DomainError
from core.sender import send_chunk as send_chunk_core
from core.settings import get_settings
from core.timeutil import as_utc, utcnow


def _engine():  # type: ignore[no-untyped-def]
    return get_engine(get_settings())


async def _infrastructure_error(_task: Any, _run: Any, state: Any) -> bool:
    # Infrastructure hiccups (database locked, connection reset) are worth a retry; the message
    # ledger makes a retried chunk skip what is already done. Domain errors (not found,
    # insufficient credits) and refused provider credentials fail the same way every time.
    raised = await state.aresult(raise_on_failure=False)
    return not isinstance(raised, DomainError | ProviderConfigError)


@task(
    name="resolve-recipients",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=_infrastructure_error,
)
async def resolve_recipients(campaign_id: str) -> dict[str, int]:
    """Snapshot the list's reachable contacts into message rows (once per campaign)."""
    settings = get_settings()
    campaign = await asyncio.to_thread(
        snapshot.take_snapshot_in_batches,
        get_engine(settings),
        get_read_engine(settings),
        campaign_id=campaign_id,
        default_zone=settings.default_timezone,
    )
    return {"total_recipients": campaign.total_recipients, "skipped": campaign.skipped_count}


@task(
    name="hold-credits",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=_infrastructure_error,
)
async def hold_credits(campaign_id: str) -> int:
    """Make the hold match the snapshot's exact cost (raises InsufficientCredits if short)."""
    return int(await in_session(_engine(), snapshot.adjust_hold, campaign_id=campaign_id))


@task(name="plan-chunks", cache_policy=NO_CACHE)
async def plan_chunks(campaign_id: str, chunk_size: int | None = None) -> list[tuple[int, int]]:
    """Seq ranges of the chunks that still have unsent messages (a re-run skips done chunks)."""
    size = chunk_size or get_settings().chunk_size
    return list(await in_session(_engine(), ledger.open_ranges, campaign_id=campaign_id, chunk_size=size))


def _flow_run_id() -> str | None:
    context = get_run_context()
    run = getattr(context, "task_run", None)
    return str(run.flow_run_id) if run is not None and run.flow_run_id else None


@task(
    name="send-chunk",
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    retry_condition_fn=_infrastructure_error,
    task_run_name="send-{channel}-chunk-{chunk_no}",
)
async def send_chunk(
    campaign_id: str, channel: str, chunk_no: int, start: int, end: int, share: float = 1.0
) -> dict[str, Any]:
    """Send one chunk's pending messages concurrently; returns the chunk's counts."""
    settings = get_settings()
    report = await send_chunk_core(
        settings=settings,
        engine=get_engine(settings),
        campaign_id=campaign_id,
        start=start,
        end=end,
        share=share,
        flow_run_id=_flow_run_id(),
    )
    return dataclasses.asdict(report)


@task(name="await-final-statuses", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
async def await_final_statuses(campaign_id: str, channel: str) -> dict[str, int]:
    """Poll the provider until every message is final or the receipt timeout passes;
    what is still not final then fails with status_timeout."""
    settings = get_settings()
    engine = get_engine(settings)
    adapter = MeteredChannel(build_channel(channel, settings), settings.channel(channel).provider)
    campaign = await in_session(engine, lifecycle.load, campaign_id)
    await adapter.open()
    try:
        return await tracking.await_final(
            engine,
            adapter,
            campaign_id,
            dispatched_at=as_utc(campaign.dispatched_at or utcnow()),
            timeout_s=settings.delivery.final_status_timeout_s,
            poll_interval_s=settings.delivery.poll_interval_s,
        )
    finally:
        await adapter.close()
        await asyncio.to_thread(metrics.default.try_flush, engine)


@task(name="settle-credits", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
async def settle_credits(campaign_id: str) -> dict[str, Any]:
    """Mark the campaign completed and charge accepted messages, releasing the rest."""

    def _complete(session: Any) -> dict[str, Any]:
        lifecycle.complete(session, campaign_id=campaign_id)
        campaign = lifecycle.load(session, campaign_id)
        return {"status": campaign.status, "credits_used": campaign.credits_used}

    return dict(await in_session(_engine(), _complete))
