"""Flow `send-campaign`: one flow run per campaign.

Reads top to bottom: start → wait for scheduled_at → snapshot recipients → hold credits →
chunks → send chunks (bounded concurrency, progress artifact) → dispatched → await receipts →
settle → summary. Every step is idempotent, so a re-run resumes where the last run stopped.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import (
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)
from prefect.context import get_run_context

from core import campaigns
from core.db import get_engine, get_read_engine, in_session, run_in_session
from core.errors import InsufficientCredits
from core.settings import get_settings
from core.timeutil import as_utc, utcnow
from flows.hooks import mark_cancelled, mark_failed
from flows.send_chunk import chunk_run_size, run_chunks_as_flow_runs
from models import CampaignStatus
from tasks.campaign_tasks import (
    await_final_statuses,
    hold_credits,
    plan_chunks,
    resolve_recipients,
    send_chunk,
    settle_credits,
)
from tasks.limits import provider_slot

SCHEDULE_CHECK_S = 5.0
HEARTBEAT_S = 5.0
COUNTS_S = 1.0


async def _db(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await in_session(get_engine(get_settings()), fn, *args, **kwargs)


async def _read(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await in_session(get_read_engine(get_settings()), fn, *args, **kwargs)


def _flow_run_id() -> str | None:
    try:
        return str(get_run_context().flow_run.id)  # type: ignore[union-attr]
    except Exception:
        return None


async def _wait_for_schedule(campaign_id: str) -> bool:
    """Sleep until scheduled_at (runners start runs up to 10 s early); False if it was
    cancelled meanwhile (a failed campaign may be retried, so it does not stop here)."""
    while True:
        campaign = await _db(campaigns.load, campaign_id)
        if campaign.status in (CampaignStatus.cancelled, CampaignStatus.completed):
            return False
        if campaign.scheduled_at is None:
            return True
        wait = (as_utc(campaign.scheduled_at) - utcnow()).total_seconds()
        if wait <= 0:
            return True
        await asyncio.sleep(min(wait, SCHEDULE_CHECK_S))


async def _heartbeat(campaign_id: str) -> None:
    """Tell the reconciler this run is alive (it resumes campaigns whose runs went silent), and
    keep the stored counts of a big campaign fresh (its GETs read them instead of counting)."""
    beats = 0
    while True:
        try:
            if beats % round(HEARTBEAT_S / COUNTS_S) == 0:
                await _db(campaigns.beat, campaign_id=campaign_id)
            if (await _read(campaigns.load, campaign_id)).total_recipients > campaigns.LIVE_COUNT_LIMIT:
                # Count on a reader (no write lock held while counting), store in a short write.
                counts = (await _read(campaigns.message_counts, [campaign_id]))[campaign_id]
                await _db(campaigns.store_counts, campaign_id=campaign_id, counts=counts)
        except Exception as exc:  # a missed beat is not worth failing the campaign for
            get_run_logger().warning("heartbeat of %s not written: %s", campaign_id, exc)
        beats += 1
        await asyncio.sleep(COUNTS_S)


def _summary_rows(campaign_id: str) -> list[dict[str, Any]]:
    def _rows(session: Any) -> list[dict[str, Any]]:
        campaign = campaigns.load(session, campaign_id)
        counts = campaigns.message_counts(session, [campaign_id])[campaign_id]
        return [
            {"metric": "status", "value": campaign.status},
            {"metric": "total_recipients", "value": campaign.total_recipients},
            {"metric": "delivered", "value": counts.get("delivered", 0)},
            {"metric": "failed", "value": counts.get("failed", 0) + counts.get("undelivered", 0)},
            {"metric": "skipped", "value": campaign.skipped_count},
            {"metric": "credits_used", "value": campaign.credits_used},
        ]

    return list(run_in_session(get_engine(get_settings()), _rows))


@flow(
    name="send-campaign",
    flow_run_name="{campaign_id}",
    on_failure=[mark_failed],
    on_crashed=[mark_failed],
    on_cancellation=[mark_cancelled],
    log_prints=True,
    persist_result=False,
)
async def send_campaign(campaign_id: str) -> dict[str, Any]:
    """Send a campaign to every recipient and see each message to a final status."""
    heartbeat = asyncio.create_task(_heartbeat(campaign_id))
    try:
        return await _send_campaign(campaign_id)
    finally:
        heartbeat.cancel()


async def _send_campaign(campaign_id: str) -> dict[str, Any]:
    logger = get_run_logger()
    settings = get_settings()
    # The campaign stays `scheduled` while the run waits for its time (runners start early).
    if not await _wait_for_schedule(campaign_id):
        return {"campaign_id": campaign_id, "status": await _db(campaigns.status_of, campaign_id)}
    status = await _db(campaigns.start_run, campaign_id=campaign_id, flow_run_id=_flow_run_id())
    if status not in (CampaignStatus.processing, CampaignStatus.sent):
        logger.info("campaign %s is %s: nothing to send", campaign_id, status)
        return {"campaign_id": campaign_id, "status": status}

    audience = await resolve_recipients(campaign_id)
    logger.info(
        "campaign %s: %s recipients, %s skipped",
        campaign_id,
        audience["total_recipients"],
        audience["skipped"],
    )
    try:
        await hold_credits(campaign_id)
    except InsufficientCredits as exc:
        await _db(campaigns.fail, campaign_id=campaign_id, reason=f"insufficient_credits: {exc}")
        raise

    campaign = await _db(campaigns.load, campaign_id)
    distributed = settings.distribute_chunks
    chunks = await plan_chunks(
        campaign_id, chunk_run_size(settings, campaign.total_recipients) if distributed else None
    )
    progress = await acreate_progress_artifact(
        progress=0.0,
        key=f"progress-{campaign_id.replace('_', '-')}",
        description=f"Messages dispatched for campaign {campaign_id}",
    )
    semaphore = asyncio.Semaphore(settings.chunk_concurrency)
    done = 0
    stopped = False

    async def chunk_done() -> None:
        nonlocal done
        done += 1
        await aupdate_progress_artifact(progress, 100.0 * done / max(len(chunks), 1))

    async def run_chunk(number: int, start: int, end: int) -> None:
        nonlocal stopped
        async with semaphore:
            if stopped:
                return
            report = await send_chunk(campaign_id, campaign.channel, number, start, end)
        stopped = stopped or bool(report["stopped"])
        await chunk_done()

    # One global slot per (channel, sender) for the whole sending phase keeps campaigns on other
    # workers that share this sender from sending at the same time (one acquisition per run).
    async with provider_slot(settings, campaign.channel, campaign.sender_value):
        if distributed:  # chunk flow runs, taken by any worker (several workers, several cores)
            await run_chunks_as_flow_runs(settings, campaign_id, campaign.channel, chunks, chunk_done)
        else:  # chunk task runs inside this process
            await asyncio.gather(*(run_chunk(i, s, e) for i, (s, e) in enumerate(chunks)))

    if stopped or campaigns.is_final(await _db(campaigns.status_of, campaign_id)):
        final = await _db(campaigns.status_of, campaign_id)
        if final == CampaignStatus.cancelled:
            await _db(campaigns.finalize_stopped, campaign_id=campaign_id, pending_code="cancelled")
        logger.info("campaign %s stopped: %s", campaign_id, final)
        return {"campaign_id": campaign_id, "status": final}

    await _db(campaigns.mark_dispatched, campaign_id=campaign_id)
    await aupdate_progress_artifact(progress, 100.0)
    receipts = await await_final_statuses(campaign_id, campaign.channel)
    result = await settle_credits(campaign_id)
    if result["status"] == CampaignStatus.cancelled:
        await _db(campaigns.finalize_stopped, campaign_id=campaign_id, pending_code="cancelled")
    await acreate_table_artifact(
        table=_summary_rows(campaign_id),
        key=f"summary-{campaign_id.replace('_', '-')}",
        description=f"Summary of campaign {campaign_id}",
    )
    logger.info(
        "campaign %s %s (%s receipt polls, %s timed out)",
        campaign_id,
        result["status"],
        receipts["polls"],
        receipts["expired"],
    )
    return {"campaign_id": campaign_id, **result}
