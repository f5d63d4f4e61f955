"""The send-campaign and launch-campaign flows against a real (harness) Prefect API."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import Engine, select, update

from core import campaigns, contacts, counts, credits, lifecycle, runs, snapshot
from core.db import session_scope
from core.settings import Settings
from core.timeutil import utcnow
from models import Campaign, Message
from models.schemas import CampaignCreate, ContactCreate
from tests.conftest import RecordingLauncher
from tests.factories import Tenant, make_tenant, start_campaign

pytestmark = pytest.mark.prefect


def _create(engine: Engine, tenant: Tenant, **over: object) -> str:
    data = {
        "name": "flow test",
        "channel": "sms",
        "contact_list_id": tenant.list_id,
        "sender_id": tenant.sender,
        "body": "Hi {{first_name}}",
        **over,
    }
    with session_scope(engine) as session:
        return campaigns.create_campaign(
            session, account_id=tenant.account_id, data=CampaignCreate.model_validate(data)
        ).id


def _state(engine: Engine, cid: str) -> tuple[Campaign, dict[str, int], credits.Balance]:
    with session_scope(engine) as session:
        campaign = lifecycle.load(session, cid)
        found = counts.message_counts(session, [cid])[cid]
        return campaign, found, credits.get_balance(session, campaign.account_id)


async def test_campaign_runs_to_completed(flow_engine: Engine) -> None:
    from flows.send_campaign import send_campaign

    tenant = make_tenant(flow_engine, credits_amount=50, contacts_n=9)
    with session_scope(flow_engine) as session:  # one recipient the provider rejects
        contacts.create_contact(
            session,
            account_id=tenant.account_id,
            data=ContactCreate(name="Bad Number", phone="+15005550001", lists=[tenant.list_id]),
        )
    cid = _create(flow_engine, tenant)
    result = await send_campaign(cid)
    assert result["status"] == "completed"
    campaign, counts, balance = _state(flow_engine, cid)
    assert campaign.status == "completed" and campaign.completed_at is not None
    assert counts == {"delivered": 9, "failed": 1}
    assert (balance.balance, balance.reserved) == (41, 0)
    assert campaign.credits_used == 9


async def test_rerun_after_a_crash_sends_nothing_twice(flow_engine: Engine, flow_settings: Settings) -> None:
    from core.sender import send_chunk
    from flows.send_campaign import send_campaign

    tenant = make_tenant(flow_engine, contacts_n=10, name="crashy")
    cid = _create(flow_engine, tenant)
    # A first run got as far as one chunk, and died with one more message in flight.
    start_campaign(flow_engine, cid)
    await send_chunk(settings=flow_settings, engine=flow_engine, campaign_id=cid, start=0, end=4)
    with session_scope(flow_engine) as session:
        session.execute(
            update(Message)
            .where(Message.campaign_id == cid, Message.seq == 5)  # type: ignore[arg-type]
            .values(status="sending", claim_token="dead", attempts=1)
        )
    result = await send_campaign(cid)
    assert result["status"] == "completed"
    with session_scope(flow_engine) as session:
        rows = list(session.execute(select(Message).where(Message.campaign_id == cid)).scalars())  # type: ignore[arg-type]
    assert all(m.attempts == 1 for m in rows)  # every message claimed exactly once
    unknown = [m for m in rows if m.error_code == "outcome_unknown"]
    assert [m.seq for m in unknown] == [5]
    _, counts, balance = _state(flow_engine, cid)
    assert counts == {"delivered": 9, "failed": 1}
    assert balance.reserved == 0 and balance.balance == 1000 - 10  # the unknown one is paid for


async def test_insufficient_credits_at_snapshot_fails_the_campaign(flow_engine: Engine) -> None:
    from flows.send_campaign import send_campaign

    tenant = make_tenant(flow_engine, credits_amount=3, contacts_n=3, name="short")
    cid = _create(flow_engine, tenant)
    with session_scope(flow_engine) as session:  # the list grew after the campaign was priced
        contacts.create_contact(
            session,
            account_id=tenant.account_id,
            data=ContactCreate(name="Late Joiner", phone="+14155551234", lists=[tenant.list_id]),
        )
    state = await send_campaign(cid, return_state=True)
    assert state.is_failed()  # the run mirrors the campaign
    campaign, counts, balance = _state(flow_engine, cid)
    assert campaign.status == "failed"
    assert campaign.failure_reason == "insufficient_credits"
    assert counts == {"pending": 4}  # nothing was sent
    assert (balance.balance, balance.reserved) == (3, 0)


async def test_cancelled_campaign_sends_nothing(flow_engine: Engine) -> None:
    from flows.send_campaign import send_campaign

    tenant = make_tenant(flow_engine, contacts_n=2, name="cancelled")
    cid = _create(flow_engine, tenant)
    with session_scope(flow_engine) as session:
        lifecycle.cancel(session, campaign=lifecycle.load(session, cid))
    assert (await send_campaign(cid, return_state=True)).is_cancelled()
    _, counts, balance = _state(flow_engine, cid)
    assert counts == {} and balance.reserved == 0


async def test_no_message_leaves_before_scheduled_at(flow_engine: Engine) -> None:
    from flows.send_campaign import send_campaign

    tenant = make_tenant(flow_engine, contacts_n=2, name="scheduled")
    when = utcnow() + timedelta(seconds=3)
    cid = _create(flow_engine, tenant, scheduled_at=when)
    assert _state(flow_engine, cid)[0].status == "scheduled"
    start = time.monotonic()
    assert (await send_campaign(cid))["status"] == "completed"
    assert time.monotonic() - start >= 2.5
    with session_scope(flow_engine) as session:
        sent_at = [
            m.sent_at for m in session.execute(select(Message).where(Message.campaign_id == cid)).scalars()
        ]  # type: ignore[arg-type]
    assert all(s is not None and s >= when for s in sent_at)


async def test_reconciler_mirrors_runs_that_died_without_hooks(
    flow_engine: Engine, flow_settings: Settings
) -> None:
    import asyncio

    from prefect import flow, get_client
    from prefect.states import Cancelled, Crashed, Running

    from deployments.reconciler import reconcile_once

    @flow(name="stand-in")
    def stand_in() -> None:
        return None

    tenant = make_tenant(flow_engine, credits_amount=100, contacts_n=2, name="reconciled")
    crashed, crashed_often, silent, cancelled, unlaunched = (_create(flow_engine, tenant) for _ in range(5))
    states = {
        crashed: Crashed(message="process killed"),
        crashed_often: Crashed(message="out of memory"),
        silent: Running(),
        cancelled: Cancelled(message="cancelled in the UI"),
    }
    run_ids = {}
    async with get_client() as client:
        for cid, state in states.items():
            run = await client.create_flow_run(stand_in, parameters={})
            await client.set_flow_run_state(run.id, state, force=True)
            run_ids[cid] = str(run.id)
    with session_scope(flow_engine) as session:
        for cid, run_id in run_ids.items():
            lifecycle.due(session, campaign_id=cid)
            runs.record_flow_run(session, campaign_id=cid, flow_run_id=run_id)
            snapshot.take_snapshot(session, campaign_id=cid)
        session.execute(update(Campaign).where(Campaign.id == crashed_often).values(resume_count=3))
        session.execute(
            update(Campaign)
            .where(Campaign.id == unlaunched)
            .values(created_at=utcnow() - timedelta(minutes=1))
        )
    await asyncio.sleep(1.2)
    launcher = RecordingLauncher()
    settings = flow_settings.model_copy(update={"stale_after_s": 1.0})
    report = await reconcile_once(settings, launcher)
    # A crash (or a run gone silent) is resumed by a new run; too many crashes fail the campaign.
    assert sorted(report.resumed) == sorted([crashed, silent])
    assert report.failed == [crashed_often] and report.cancelled == [cancelled]
    assert [c["campaign_id"] for c in launcher.launched] == [unlaunched]
    c = _state(flow_engine, crashed)[0]
    assert (c.status, c.flow_run_id, c.resume_count) == ("processing", None, 1)
    failed = _state(flow_engine, crashed_often)[0]
    # The account reads a sentence, never the internal error text.
    assert failed.status == "failed" and failed.failure_reason == lifecycle.FailureReason.crashed
    assert _state(flow_engine, cancelled)[0].status == "cancelled"
    async with get_client() as client:
        assert (await client.read_flow_run(run_ids[silent])).state.is_crashed()

    # The next pass starts the new runs, each with its own idempotency key.
    report = await reconcile_once(settings, launcher)
    assert sorted(report.launched) == sorted([crashed, silent])
    assert {c["key"] for c in launcher.launched[1:]} == {f"{crashed}:resume-1", f"{silent}:resume-1"}
    assert _state(flow_engine, crashed)[0].flow_run_id == f"fr-{crashed}:resume-1"
    # Only the open campaigns still hold credits: crashed, silent, unlaunched (2 each).
    assert _state(flow_engine, crashed)[2].reserved == 6


async def test_launch_campaign_creates_and_triggers(flow_engine: Engine) -> None:
    from prefect import get_client

    from deployments.worker import build_deployments
    from flows.launch_campaign import launch_campaign

    for deployment in await build_deployments():
        await deployment.aapply()  # type: ignore[attr-defined]
    tenant = make_tenant(flow_engine, contacts_n=2, name="launcher")
    cid = await launch_campaign(
        account_id=tenant.account_id,
        name="From the UI",
        channel="sms",
        contact_list_id=tenant.list_id,
        sender_id=tenant.sender,
        body="Hello {{name}}",
    )
    campaign, _, balance = _state(flow_engine, cid)
    assert campaign.flow_run_id and balance.reserved == 2
    async with get_client() as client:
        run = await client.read_flow_run(campaign.flow_run_id)
    # Named so a person recognises it: the campaign's id, then its name.
    assert run.name == f"{cid} · From the UI" and run.parameters == {"campaign_id": cid}
    assert {"channel:sms", f"account:{tenant.account_id}"} <= set(run.tags)
    assert run.state is not None and run.state.is_scheduled()
    # The same key never creates a second run.
    from flows.launcher import PrefectLauncher

    again = await PrefectLauncher().launch(
        campaign_id=cid, account_id=tenant.account_id, channel="sms", scheduled_at=None
    )
    assert again == campaign.flow_run_id


async def test_a_paused_run_that_cannot_be_rescheduled_waits_in_process(flow_engine: Engine) -> None:
    """A run with no deployment (called directly) cannot be suspended and rescheduled: it shows
    Paused in Prefect, waits in-process, and goes on once the campaign is resumed."""
    import asyncio

    from prefect import get_client

    from flows.send_campaign import send_campaign

    tenant = make_tenant(flow_engine, contacts_n=3, name="paused in process")
    cid = _create(flow_engine, tenant)
    with session_scope(flow_engine) as session:
        lifecycle.pause(session, campaign=lifecycle.load(session, cid))
    run = asyncio.create_task(send_campaign(cid))
    await asyncio.sleep(4)
    assert not run.done()
    campaign, found, _ = _state(flow_engine, cid)
    assert campaign.status == "paused" and found == {}  # nothing snapshotted, nothing sent
    async with get_client() as client:
        state = (await client.read_flow_run(campaign.flow_run_id)).state
    assert state is not None and state.is_paused()
    with session_scope(flow_engine) as session:
        lifecycle.resume(session, campaign=lifecycle.load(session, cid))
    result = await asyncio.wait_for(run, 60)
    assert result["status"] == "completed"
    assert _state(flow_engine, cid)[1] == {"delivered": 3}
