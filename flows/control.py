"""Pause and resume as Prefect sees them: the campaign's flow run shows Suspended while the
campaign is paused, and the UI's buttons act on the campaign.

- The API pauses a campaign in the database; the run notices (its senders stop within a
  fraction of a second), hands back what it had not sent and suspends itself: state Suspended
  (no timeout), the process exits, the runner slot is free.
- The UI's Suspend button puts a running run in Suspended (with a 300 s timeout); the run's
  heartbeat notices and pauses the campaign. Prefect's engine lets the running task runs end
  and raises `Pause` at the next one; the run then suspends itself the same way as above
  (without a timeout, so Prefect never fails a campaign that is simply paused).
- Resume (the UI's button, or POST …/resume through `PrefectLauncher.resume`) reschedules the
  run; it starts again from the top, and every step is idempotent: it only sends `pending` rows.
- A run that cannot be rescheduled (no deployment, or a subflow) pauses in-process instead and
  waits for the campaign or the run to be resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from datetime import datetime
from typing import Any

from prefect import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.context import FlowRunContext
from prefect.exceptions import Pause
from prefect.states import Paused, Running, Suspended

from core import lifecycle
from core.db import get_engine, in_session
from core.settings import get_settings
from core.timeutil import as_utc
from models import CampaignStatus

POLL_S = 1.0
# Campaigns whose run is holding its own pause (hold_paused): the Paused state in Prefect is
# ours then, and the heartbeat must not mirror it back onto a campaign the API just resumed.
_holding: set[str] = set()


def own_run() -> FlowRun | None:
    """The flow run this code runs in."""
    context = FlowRunContext.get()
    return context.flow_run if context is not None else None


def own_run_id() -> str | None:
    run = own_run()
    return str(run.id) if run is not None else None


async def _db(fn: Any, /, **kwargs: Any) -> Any:
    return await in_session(get_engine(get_settings()), fn, **kwargs)


async def read_state(run_id: str) -> Any:
    """The run's current Prefect state."""
    async with get_client() as client:
        return (await client.read_flow_run(uuid.UUID(run_id))).state


async def resumed_since(run_id: str, paused_at: datetime | None) -> bool:
    """True if this run left a Paused/Suspended state after the campaign was paused, i.e. it
    was resumed in Prefect (the UI's Resume button) after that pause."""
    async with get_client() as client:
        states = sorted(await client.read_flow_run_states(uuid.UUID(run_id)), key=lambda s: s.timestamp)
    left_pause: datetime | None = None
    for previous, state in itertools.pairwise(states):
        if previous.type == StateType.PAUSED and state.type != StateType.PAUSED:
            left_pause = state.timestamp
    return left_pause is not None and (paused_at is None or as_utc(left_pause) >= as_utc(paused_at))


async def settle_start(campaign_id: str) -> str:
    """At the start of a run, a paused campaign whose run was resumed in Prefect is resumed."""
    campaign = await _db(lifecycle.load, campaign_id=campaign_id)
    run_id = own_run_id()
    if campaign.status != CampaignStatus.paused or run_id is None:
        return str(campaign.status)
    if await resumed_since(run_id, campaign.paused_at):
        try:
            campaign = await _db(lifecycle.resume, campaign=campaign)
        except Exception:  # resumed by the API meanwhile, or cancelled: take it as it is
            campaign = await _db(lifecycle.load, campaign_id=campaign_id)
    return str(campaign.status)


async def mirror_prefect_pause(campaign_id: str, run_id: str) -> bool:
    """Called every second by the heartbeat: a run suspended in the UI pauses its campaign.
    True while the run is paused in Prefect and its campaign too."""
    if campaign_id in _holding:
        return False
    state = await read_state(run_id)
    if state is None or state.type != StateType.PAUSED or campaign_id in _holding:
        return False
    campaign = await _db(lifecycle.load, campaign_id=campaign_id)
    if lifecycle.allowed(lifecycle.Event.pause, campaign.status):
        campaign = await _db(lifecycle.pause, campaign=campaign)
    # A `sent` campaign (only receipts awaited) cannot pause: the reconciler resumes its run.
    return campaign.status == CampaignStatus.paused


async def hold_paused(campaign_id: str) -> None:
    """The campaign is paused and this run has stopped sending: suspend the run (raises Pause:
    the process exits, a resume reschedules it), or, where Prefect cannot reschedule it, wait
    in-process until the campaign or the run is resumed."""
    run = own_run()
    if run is None:  # not in a flow run (tests calling .fn): nothing to show
        return
    _holding.add(campaign_id)
    try:
        await _hold(campaign_id, run)
    finally:
        _holding.discard(campaign_id)


async def _hold(campaign_id: str, run: FlowRun) -> None:
    async with get_client() as client:
        fresh = await client.read_flow_run(run.id)
        if fresh.deployment_id is not None and fresh.parent_task_run_id is None:
            suspended: Any = Suspended(pause_key=str(uuid.uuid4()), message="campaign paused")
            result = await client.set_flow_run_state(run.id, suspended, force=True)
            # A resume that came while we were stopping must not be lost.
            if await _db(lifecycle.status_of, campaign_id=campaign_id) != CampaignStatus.paused:
                await client.resume_flow_run(run.id)
            raise Pause(state=result.state or suspended)
        await client.set_flow_run_state(
            run.id, Paused(pause_key=str(uuid.uuid4()), message="campaign paused"), force=True
        )
        while True:
            await asyncio.sleep(POLL_S)
            status = await _db(lifecycle.status_of, campaign_id=campaign_id)
            state = (await client.read_flow_run(run.id)).state
            if status != CampaignStatus.paused:  # resumed (or cancelled) through the API
                if state is not None and state.type == StateType.PAUSED:
                    await client.set_flow_run_state(run.id, Running(), force=True)
                return
            if state is not None and state.type == StateType.RUNNING:  # resumed in the UI
                campaign = await _db(lifecycle.load, campaign_id=campaign_id)
                with contextlib.suppress(Exception):
                    await _db(lifecycle.resume, campaign=campaign)
                return
