"""The tasks of the send-campaign flow. Ids cross task boundaries; each task opens its own
database session. Chunks, not messages, are task runs."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff
from sqlalchemy import func, select
from sqlmodel import col

from channels.registry import build_channel
from core import campaigns, tracking
from core.db import get_engine, get_read_engine, run_in_session
from core.dispatch import send_chunk as send_chunk_core
from core.settings import get_settings
from core.timeutil import as_utc, utcnow
from models import Message, MessageStatus


def _engine():  # type: ignore[no-untyped-def]
    return get_engine(get_settings())


def _in_tx(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return run_in_session(_engine(), fn, *args, **kwargs)


@task(name="resolve-recipients", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
async def resolve_recipients(campaign_id: str) -> dict[str, int]:
    """Snapshot the list's reachable contacts into message rows (once per campaign)."""
    settings = get_settings()
    campaign = await asyncio.to_thread(
        campaigns.take_snapshot_in_batches,
        get_engine(settings),
        get_read_engine(settings),
        campaign_id=campaign_id,
    )
    return {"total_recipients": campaign.total_recipients, "skipped": campaign.skipped_count}


@task(
    name="hold-credits",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=lambda _t, _r, state: "InsufficientCredits" not in str(state.message),
)
async def hold_credits(campaign_id: str) -> int:
    """Make the hold match the snapshot's exact cost (raises InsufficientCredits if short)."""
    return int(await asyncio.to_thread(_in_tx, campaigns.adjust_hold, campaign_id=campaign_id))


def _plan(session: Any, campaign_id: str, chunk_size: int) -> list[tuple[int, int]]:
    total = session.execute(
        select(func.count()).select_from(Message).where(col(Message.campaign_id) == campaign_id)
    ).scalar_one()
    open_seqs = (
        session.execute(
            select(func.distinct(col(Message.seq) // chunk_size)).where(
                col(Message.campaign_id) == campaign_id,
                col(Message.status).in_([MessageStatus.pending, MessageStatus.sending]),
            )
        )
        .scalars()
        .all()
    )
    return [(k * chunk_size, min((k + 1) * chunk_size, total)) for k in sorted(int(k) for k in open_seqs)]


@task(name="plan-chunks", cache_policy=NO_CACHE)
async def plan_chunks(campaign_id: str, chunk_size: int | None = None) -> list[tuple[int, int]]:
    """Seq ranges of the chunks that still have unsent messages (a re-run skips done chunks)."""
    size = chunk_size or get_settings().chunk_size
    return list(await asyncio.to_thread(_in_tx, _plan, campaign_id, size))


def unsent_in_range(session: Any, campaign_id: str, start: int, end: int) -> int:
    """Messages of a seq range not yet handed to the provider (pending or claimed)."""
    return int(
        session.execute(
            select(func.count()).where(
                col(Message.campaign_id) == campaign_id,
                col(Message.seq) >= start,
                col(Message.seq) < end,
                col(Message.status).in_([MessageStatus.pending, MessageStatus.sending]),
            )
        ).scalar_one()
    )


def _chunk_retry_condition(_task: Any, _run: Any, state: Any) -> bool:
    # Infrastructure hiccups (database locked, connection reset) are worth a chunk retry;
    # the message ledger makes the retry skip what is already done.
    message = str(state.message)
    return "NotFound" not in message and "ProviderConfigError" not in message


@task(
    name="send-chunk",
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    retry_condition_fn=_chunk_retry_condition,
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
    )
    return dataclasses.asdict(report)


@task(name="await-final-statuses", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
async def await_final_statuses(campaign_id: str, channel: str) -> dict[str, int]:
    """Poll the provider until every message is final or the receipt timeout passes;
    what is still not final then fails with status_timeout."""
    settings = get_settings()
    engine = get_engine(settings)
    adapter = build_channel(channel, settings)
    campaign = await asyncio.to_thread(_in_tx, campaigns.load, campaign_id)
    started = as_utc(campaign.dispatched_at or utcnow())
    deadline = started.timestamp() + settings.delivery.final_status_timeout_s
    polls = 0
    await adapter.open()
    try:
        while True:
            remaining = await asyncio.to_thread(_in_tx, tracking.nonfinal_count, campaign_id)
            status = await asyncio.to_thread(_in_tx, campaigns.status_of, campaign_id)
            if remaining == 0 or campaigns.is_final(status):
                return {"polls": polls, "expired": 0}
            if time.time() >= deadline:
                expired = await asyncio.to_thread(_in_tx, tracking.expire, campaign_id=campaign_id)
                return {"polls": polls, "expired": expired}
            await asyncio.to_thread(_in_tx, tracking.replay_events, campaign_id=campaign_id)
            await tracking.poll_once(engine, adapter, campaign_id)
            polls += 1
            remaining = await asyncio.to_thread(_in_tx, tracking.nonfinal_count, campaign_id)
            if remaining:
                await asyncio.sleep(settings.delivery.poll_interval_s)
    finally:
        await adapter.close()


@task(name="settle-credits", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
async def settle_credits(campaign_id: str) -> dict[str, Any]:
    """Mark the campaign completed and charge accepted messages, releasing the rest."""

    def _complete(session: Any) -> dict[str, Any]:
        campaigns.complete(session, campaign_id=campaign_id)
        campaign = campaigns.load(session, campaign_id)
        return {"status": campaign.status, "credits_used": campaign.credits_used}

    return dict(await asyncio.to_thread(_in_tx, _complete))
