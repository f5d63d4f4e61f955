"""Flow `send-campaign`: one flow run per campaign.

Reads top to bottom: start → wait for scheduled_at → snapshot recipients → hold credits →
chunks → send chunks (bounded concurrency, progress artifact) → dispatched → await receipts →
settle → summary. Every step is idempotent, so a re-run resumes where the last run stopped; a
pause stops sending and suspends the run (see flows/control.py), and its resume runs it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.exceptions import Pause
from prefect.states import Cancelled, Failed

from channels.base import ProviderConfigError
from core import counts, ledger, lifecycle, runs, slots, tracking, zones
from core.channels import build_channel
from core.db import get_engine, get_read_engine, in_session, run_in_session
from core.delivery import MeteredChannel
from core.errors import InsufficientCredits
from core.lifecycle import FailureReason
from core.logs import campaign_id_var
from core.settings import Settings, get_settings
from core.timeutil import as_utc, iso_z, utcnow
from flows import control
from flows.artifacts import OperatorArtifacts
from flows.hooks import mark_cancelled, mark_crashed, mark_failed
from flows.send_chunk import ChunkRunFailed, chunk_run_size, observe_run, run_chunks_as_flow_runs
from models import CampaignStatus
from tasks.campaign_tasks import (
    await_final_statuses,
    hold_credits,
    plan_chunks,
    resolve_recipients,
    send_chunk,
    settle_credits,
)

SCHEDULE_CHECK_S = 1.0
HEARTBEAT_S = 5.0
COUNTS_S = 1.0
DISPATCH_PASSES = 3
# A run waiting for a send window looks this often for a pause, cancel or edit.
WINDOW_CHECK_S = 2.0
ENDING_WRITE_S = 10.0
S = CampaignStatus
log = logging.getLogger("campaigns.flow")


async def _db(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
    return await in_session(get_engine(get_settings()), fn, *args, **kwargs)


async def _read(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
    return await in_session(get_read_engine(get_settings()), fn, *args, **kwargs)


async def _heartbeat(campaign_id: str, artifacts: OperatorArtifacts) -> None:
    """Tell the reconciler this run is alive, keep the stored counts of a big campaign fresh
    (its GETs read them instead of counting), notice a Suspend pressed in the Prefect UI, and
    keep the operator's artifacts current."""
    run_id = control.own_run_id()
    beats = 0
    while True:
        try:
            if beats % round(HEARTBEAT_S / COUNTS_S) == 0:
                await _db(runs.beat, campaign_id=campaign_id)
            if (await _read(lifecycle.load, campaign_id)).total_recipients > counts.LIVE_COUNT_LIMIT:
                # Count on a reader (no write lock held while counting), store in a short write.
                found = (await _read(counts.message_counts, [campaign_id]))[campaign_id]
                await _db(counts.store_counts, campaign_id=campaign_id, counts=found)
            if run_id is not None:
                await control.mirror_prefect_pause(campaign_id, run_id)
        except Exception as exc:  # a missed beat is not worth failing the campaign for
            log.warning("heartbeat of %s not written: %s", campaign_id, exc)
        try:
            await artifacts.tick()
        except Exception as exc:
            log.warning("artifacts of %s not updated: %s", campaign_id, exc)
        beats += 1
        await asyncio.sleep(COUNTS_S)


def _run_name() -> str:
    """The run's name as the launcher gave it ('cmp_… · name'), also when started otherwise."""
    from prefect.runtime import flow_run

    from flows.launcher import run_name

    campaign_id = str((flow_run.parameters or {}).get("campaign_id", ""))
    try:
        name = run_in_session(get_read_engine(get_settings()), lambda s: lifecycle.load(s, campaign_id).name)
    except Exception:
        name = None
    return run_name(campaign_id, name)


@flow(
    name="send-campaign",
    flow_run_name=_run_name,
    on_failure=[mark_failed],
    on_crashed=[mark_crashed],
    on_cancellation=[mark_cancelled],
    log_prints=True,
    persist_result=False,
)
async def send_campaign(campaign_id: str) -> Any:
    """Send a campaign to every recipient and see each message to a final status."""
    token = observe_run(campaign_id)
    artifacts = OperatorArtifacts(campaign_id)
    heartbeat = asyncio.create_task(_heartbeat(campaign_id, artifacts))
    try:
        while True:
            try:
                status = await _run_once(campaign_id)
            except Pause:
                # Suspended in the UI: the heartbeat paused the campaign (its senders stopped),
                # and Prefect's engine raised Pause at the next task boundary, once the running
                # task runs had ended. Suspend again, without the UI's timeout.
                if not await control.mirror_prefect_pause(campaign_id, str(control.own_run_id())):
                    raise  # not pausable (already dispatched): the reconciler resumes the run
                status = S.paused
            await _write_ending(artifacts)
            if status != S.paused:
                return _final_state(campaign_id, status)
            await control.hold_paused(campaign_id)  # suspends (exits) or returns once resumed
    except Exception:
        await _write_ending(artifacts)  # the run fails: say how far it got and why
        raise
    finally:
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
        campaign_id_var.reset(token)


async def _write_ending(artifacts: OperatorArtifacts) -> None:
    """The artifacts as the run leaves them; never the reason a run fails."""
    try:
        await asyncio.wait_for(artifacts.ending(), ENDING_WRITE_S)
    except Exception as exc:
        log.warning("final artifacts of %s not written: %s", artifacts.campaign_id, exc)


def _final_state(campaign_id: str, status: str) -> Any:
    result = {"campaign_id": campaign_id, "status": status}
    if status == S.cancelled:
        return Cancelled(message=f"campaign {campaign_id} cancelled", data=result)
    if status == S.failed:
        return Failed(message=f"campaign {campaign_id} failed", data=result)
    return result


async def _run_once(campaign_id: str) -> str:
    """One pass from the top; returns the campaign's status when the pass stops."""
    logger = get_run_logger()
    settings = get_settings()
    status = await _db(lifecycle.start, campaign_id=campaign_id, flow_run_id=control.own_run_id())
    if status == S.paused:
        status = await control.settle_start(campaign_id)
    if status in (S.draft, S.scheduled):
        status = await _wait_until_due(campaign_id)
    if status not in (S.processing, S.sent):
        return status
    audience = await resolve_recipients(campaign_id)
    logger.info("campaign %s: %s recipients, %s skipped", campaign_id, *audience.values())
    try:
        await hold_credits(campaign_id)
    except InsufficientCredits:
        await _db(lifecycle.fail, campaign_id=campaign_id, reason=FailureReason.insufficient_credits)
        return S.failed
    if (status := await _db(lifecycle.status_of, campaign_id)) == S.processing:
        status = await _dispatch(settings, campaign_id)
    if status != S.sent:
        return await _stopped(campaign_id, status)
    receipts = await await_final_statuses(campaign_id, (await _db(lifecycle.load, campaign_id)).channel)
    result = await settle_credits(campaign_id)
    logger.info(
        "campaign %s %s (%s receipt polls, %s timed out)", campaign_id, result["status"], *receipts.values()
    )
    if result["status"] == S.sent:  # stopped meanwhile (it cannot be: sent is not pausable)
        return await _stopped(campaign_id, await _db(lifecycle.status_of, campaign_id))
    return str(result["status"])


async def _wait_until_due(campaign_id: str) -> str:
    """Sleep until scheduled_at (runners start runs up to 10 s early; an edit may move it),
    then draft/scheduled → processing; returns early on pause or cancel."""
    while True:
        campaign = await _db(lifecycle.load, campaign_id)
        if campaign.status not in (S.draft, S.scheduled):
            return str(campaign.status)
        wait = (as_utc(campaign.scheduled_at) - utcnow()).total_seconds() if campaign.scheduled_at else 0
        if wait <= 0:
            return str(await _db(lifecycle.due, campaign_id=campaign_id))
        await asyncio.sleep(min(wait, SCHEDULE_CHECK_S))


async def _dispatch(settings: Settings, campaign_id: str) -> str:
    """Send every chunk, holding the sender's slot; processing → sent once nothing is unsent.
    A pass whose chunks stopped early (a lost lease) is followed by another, a few times. With
    a send window, each round sends to the recipients inside theirs (rounds go on while they
    make progress), then the run sleeps (slot released) until the next window opens for
    someone still waiting."""
    campaign = await _db(lifecycle.load, campaign_id)
    window = campaign.send_window
    real_provider = settings.channel(campaign.channel).provider != "sandbox"
    size = chunk_run_size(settings, campaign.total_recipients) if settings.distribute_chunks else None
    stalled, round_key = 0, ""
    try:
        while True:
            before = await _unsent(campaign_id, campaign.total_recipients) if window else 0
            slot: Any = contextlib.nullcontext()
            if settings.global_limits and real_provider:
                name = slots.slot_name(campaign.channel, campaign.sender_value)
                slot = slots.hold(get_engine(settings), name=name, holder=campaign_id)
            async with slot:
                if window:
                    chunks = await _open_ranges(campaign_id, size or settings.chunk_size, window)
                else:
                    chunks = await plan_chunks(campaign_id, size)
                for _pass in range(DISPATCH_PASSES):
                    if not chunks:
                        break
                    await _send_chunks(settings, campaign, chunks, round_key)
                    if await _db(lifecycle.status_of, campaign_id) != S.processing:
                        break
                    chunks = await _open_ranges(campaign_id, size or settings.chunk_size, window)
            if not window or await _db(lifecycle.status_of, campaign_id) != S.processing:
                break
            if chunks:  # recipients inside their window are still unsent after the passes
                after = await _unsent(campaign_id, campaign.total_recipients)
                stalled = stalled + 1 if after >= before else 0
                if stalled >= DISPATCH_PASSES:
                    break  # no progress: failed below, as without a window
            elif not await _wait_for_window(campaign_id, window):
                break
            round_key = f":w{int(time.time())}"  # the next round's chunk runs are new ones
    except ProviderConfigError as exc:
        log.error("campaign %s: the provider refused our credentials: %s", campaign_id, exc)
        await _db(lifecycle.fail, campaign_id=campaign_id, reason=FailureReason.provider_credentials)
    except ChunkRunFailed as exc:
        log.error("campaign %s: %s", campaign_id, exc)
        await _db(lifecycle.fail, campaign_id=campaign_id, reason=FailureReason.chunk_failed)
    status = str(await _db(lifecycle.status_of, campaign_id))
    if status != S.processing:
        return status
    if await _db(ledger.open_ranges, campaign_id=campaign_id, chunk_size=settings.chunk_size):
        await _db(lifecycle.fail, campaign_id=campaign_id, reason=FailureReason.internal)
    else:
        await _db(lifecycle.dispatched, campaign_id=campaign_id)
    return str(await _db(lifecycle.status_of, campaign_id))


async def _unsent(campaign_id: str, total: int) -> int:
    return int(await _db(ledger.unsent_in_range, campaign_id, 0, total + 1))


async def _open_ranges(campaign_id: str, chunk_size: int, window: dict[str, str] | None) -> list[Any]:
    """The ranges still holding unsent messages (with a window: of recipients inside theirs)."""
    open_zones = await _db(ledger.open_zones, campaign_id=campaign_id, window=window)
    if open_zones == []:
        return []
    return list(
        await _db(ledger.open_ranges, campaign_id=campaign_id, chunk_size=chunk_size, zones=open_zones)
    )


async def _wait_for_window(campaign_id: str, window: dict[str, str]) -> bool:
    """Sleep until the send window opens for some recipient still waiting (the artifacts say
    so), looking up the receipts of what was sent meanwhile; False if the campaign stopped
    sending, or if nobody waits any more."""
    settings = get_settings()
    engine = get_engine(settings)
    campaign = await _db(lifecycle.load, campaign_id)
    receipts = MeteredChannel(
        build_channel(campaign.channel, settings), settings.channel(campaign.channel).provider
    )
    said = None
    await receipts.open()
    try:
        while True:
            if await _db(lifecycle.status_of, campaign_id) != S.processing:
                return False
            waiting = await _db(ledger.waiting_zones, campaign_id=campaign_id)
            if not waiting:
                return False
            now = utcnow()
            opening = min(zones.next_open(window, zone, now) for zone in waiting)
            wait = (opening - now).total_seconds()
            if wait <= 0:
                return True
            if said != opening:
                get_run_logger().info(
                    "campaign %s: %s messages wait for their send window (%s-%s local); next opens at %s",
                    campaign_id,
                    sum(waiting.values()),
                    window["start"],
                    window["end"],
                    iso_z(opening),
                )
                said = opening
            try:  # receipts of what went out keep arriving while the others wait
                await in_session(engine, tracking.replay_events, campaign_id=campaign_id)
                await tracking.poll_once(engine, receipts, campaign_id)
            except Exception as exc:  # the receipt wait after dispatch retries; never fail here
                log.warning("receipts of %s not polled: %s", campaign_id, exc)
            await asyncio.sleep(min(wait, max(WINDOW_CHECK_S, settings.delivery.poll_interval_s)))
    finally:
        await receipts.close()


async def _send_chunks(
    settings: Settings, campaign: Any, chunks: list[tuple[int, int]], round_key: str = ""
) -> None:
    """One pass over the ranges (the heartbeat shows the progress by messages)."""
    if settings.distribute_chunks:  # chunk flow runs, taken by any worker (several workers, cores)
        await run_chunks_as_flow_runs(
            settings,
            campaign.id,
            campaign.channel,
            campaign.control_version,
            chunks,
            campaign.send_window,
            round_key,
        )
    else:  # chunk task runs inside this process
        await _run_chunk_tasks(settings, campaign.id, campaign.channel, chunks)


async def _sending(campaign_id: str) -> bool:
    return await _db(lifecycle.status_of, campaign_id) in ledger.SENDING_STATUSES


async def _run_chunk_tasks(
    settings: Settings, campaign_id: str, channel: str, chunks: list[tuple[int, int]]
) -> None:
    """The chunks as task runs, `chunk_concurrency` at a time; none starts once one stopped or
    failed (the first failure is raised when the running ones have ended)."""
    semaphore = asyncio.Semaphore(settings.chunk_concurrency)
    stopped = asyncio.Event()

    async def run_chunk(number: int, start: int, end: int) -> None:
        async with semaphore:
            if stopped.is_set() or not await _sending(campaign_id):
                stopped.set()
                return
            try:
                report = await send_chunk(campaign_id, channel, number, start, end)
            except BaseException:
                stopped.set()
                raise
        if report["stopped"]:
            stopped.set()

    results = await asyncio.gather(
        *(run_chunk(i, s, e) for i, (s, e) in enumerate(chunks)), return_exceptions=True
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise errors[0]


async def _stopped(campaign_id: str, status: str) -> str:
    """Sending stopped before the end: a cancelled campaign is finalized once nothing can still
    send for it; a paused one waits for its resume."""
    if status == S.cancelled:
        while not await _db(ledger.finalize_stopped, campaign_id=campaign_id, cancelled=True):
            await asyncio.sleep(0.5)  # chunk runs elsewhere are still stopping
    if status == S.paused:
        await _db(slots.release_all, holder=campaign_id)
    get_run_logger().info("campaign %s stopped: %s", campaign_id, status)
    return status
