"""Schedules of launch-campaign/default in a real (harness) Prefect API, and its run form."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from core.schedules import Planned, Timing
from core.settings import Settings
from tests.factories import Tenant, make_tenant

pytestmark = pytest.mark.prefect


async def _register() -> Any:
    """What every start of `serve` or `campaigns worker` does (Runner.aadd_deployment)."""
    from deployments.worker import build_deployments

    ids = {}
    for deployment in await build_deployments():
        ids[deployment.flow_name] = await deployment.aapply()
    return ids["launch-campaign"]


def _params(tenant: Tenant, schedule_id: str) -> dict[str, Any]:
    return {
        "account_id": tenant.account_id,
        "schedule_id": schedule_id,
        "name": "weekly",
        "channel": "sms",
        "contact_list_id": tenant.list_id,
        "sender_id": tenant.sender,
        "body": "Hi {{first_name}}",
    }


async def test_registering_again_keeps_every_schedule_and_its_parameters(flow_engine: Engine) -> None:
    """Before: each start re-sent an empty schedule list; Prefect then deleted every schedule
    unless all had slugs (one made in the UI has none) and warned it would delete them all."""
    from prefect import get_client
    from prefect.client.schemas.schedules import CronSchedule

    from flows.schedules import PrefectScheduler

    deployment_id = await _register()
    tenant = make_tenant(flow_engine, name="keeps")
    ours = Planned("sch_keep1", Timing("0 9 * * 1", None, "Europe/Paris"), True, _params(tenant, "sch_keep1"))
    await PrefectScheduler().create(ours)
    async with get_client() as client:
        # One an operator made in the Prefect UI: no slug, parameters of its own.
        await client.create_deployment_schedules(
            deployment_id,
            [(CronSchedule(cron="30 7 * * *", timezone="UTC"), False)],
            parameters={"name": "ui"},
        )
        before = {
            (s.slug, s.active, str(s.schedule), tuple(sorted(s.parameters.items())))
            for s in await client.read_deployment_schedules(deployment_id)
        }
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the deprecated "empty list keeps them" path
        assert await _register() == deployment_id
        await _register()
    async with get_client() as client:
        after = {
            (s.slug, s.active, str(s.schedule), tuple(sorted(s.parameters.items())))
            for s in await client.read_deployment_schedules(deployment_id)
        }
    assert len(before) == 2 and after == before


async def test_the_prefect_scheduler_round_trip(flow_engine: Engine) -> None:
    from flows.schedules import PrefectScheduler

    await _register()
    tenant = make_tenant(flow_engine, name="roundtrip")
    scheduler = PrefectScheduler()
    anchor = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=30)
    cron = Planned(
        "sch_rt_cron", Timing("0 9 * * *", None, "America/New_York"), True, _params(tenant, "sch_rt_cron")
    )
    every = Planned("sch_rt_every", Timing(None, 3600, "UTC", anchor), True, _params(tenant, "sch_rt_every"))
    await scheduler.create(cron)
    await scheduler.create(cron)  # a retried create makes no second schedule
    await scheduler.create(every)
    held = await scheduler.read_all()
    assert {"sch_rt_cron", "sch_rt_every"} <= set(held)
    got = held["sch_rt_cron"]
    assert got.timing.cron == "0 9 * * *" and got.timing.timezone == "America/New_York"
    assert got.parameters == cron.parameters and got.active
    assert got.next_run_at is not None and got.next_run_at.astimezone(UTC).hour in (13, 14)
    nxt = held["sch_rt_every"].next_run_at
    assert held["sch_rt_every"].timing.interval_seconds == 3600
    assert nxt is not None and abs((nxt - (anchor + timedelta(hours=1))).total_seconds()) < 1
    assert await scheduler.set_active("sch_rt_cron", False)
    assert (await scheduler.read_all())["sch_rt_cron"].active is False
    assert await scheduler.delete("sch_rt_cron") and not await scheduler.delete("sch_rt_cron")
    assert not await scheduler.set_active("sch_rt_cron", True)
    assert "sch_rt_cron" not in await scheduler.read_all()


async def test_the_run_form_is_typed_and_described(flow_engine: Engine) -> None:
    from prefect import get_client

    deployment_id = await _register()
    async with get_client() as client:
        deployment = await client.read_deployment(deployment_id)
    schema = deployment.parameter_openapi_schema
    props = schema["properties"]
    assert set(schema["required"]) == {"account_id", "name", "channel", "contact_list_id", "sender_id"}
    for name, prop in props.items():
        assert prop.get("description"), f"{name} has no description"
    definitions = schema.get("definitions") or schema.get("$defs") or {}
    channel = (
        definitions[props["channel"]["$ref"].rsplit("/", 1)[-1]]
        if "$ref" in props["channel"]
        else props["channel"]
    )
    assert set(channel["enum"]) == {"sms", "whatsapp", "telegram", "email", "slack"}
    scheduled = props["scheduled_at"]
    assert "date-time" in str(scheduled)
    template = str(props["template"])
    assert "WhatsAppTemplate" in template and "components" in str(definitions.get("WhatsAppTemplate", {}))


@pytest.mark.parametrize(
    ("over", "status"),
    [
        ({"channel": "fax"}, 400),
        ({"name": ""}, 400),
        ({"contact_list_id": "lst_missing"}, 404),
        ({"sender_id": "UNKNOWN"}, 422),
        ({"body": "Hi {{nickname}}"}, 422),
    ],
)
async def test_invalid_input_fails_the_run_with_the_api_message(
    flow_engine: Engine, flow_settings: Settings, over: dict[str, Any], status: int
) -> None:
    from api.app import create_app
    from flows.launch_campaign import LaunchRefused, launch_campaign
    from tests.conftest import RecordingLauncher

    tenant = make_tenant(flow_engine, name=f"bad-{status}")
    fields = {
        "name": "From the form",
        "channel": "sms",
        "contact_list_id": tenant.list_id,
        "sender_id": tenant.sender,
        "body": "Hi {{first_name}}",
        **over,
    }
    with TestClient(create_app(flow_settings, launcher=RecordingLauncher(), engine=flow_engine)) as api:
        answer = api.post("/v1/campaigns", json=fields, headers=tenant.headers)
    assert answer.status_code == status, answer.text
    with pytest.raises(LaunchRefused) as refused:
        await launch_campaign(account_id=tenant.account_id, **fields)
    assert str(refused.value) == f"{answer.json()['error']}: {answer.json()['message']}"


async def test_a_pause_without_parameters_empties_them_and_the_reconciler_puts_them_back(
    flow_engine: Engine, flow_settings: Settings
) -> None:
    """Prefect 3.9 empties a schedule's parameters on an update that does not resend them (as
    the UI's toggle sends only `active`): every later run would fail for want of account_id.
    Our own pause keeps them; the reconciler restores what someone else emptied."""
    from prefect import get_client

    from core import schedules
    from core.db import session_scope
    from deployments.reconciler import sync_schedules
    from flows.schedules import PrefectScheduler

    deployment_id = await _register()
    tenant = make_tenant(flow_engine, name="emptied")
    sid = "sch_emptied"
    params = _params(tenant, sid)
    with session_scope(flow_engine) as session:
        schedules.insert(
            session, schedule_id=sid, account_id=tenant.account_id, name="weekly", parameters=params
        )
    scheduler = PrefectScheduler()
    await scheduler.create(Planned(sid, Timing("0 9 * * 1", None, "UTC"), True, params))

    assert await scheduler.set_active(sid, False) and await scheduler.set_active(sid, True)
    assert (await scheduler.read_all())[sid].parameters == params  # our pause/resume keeps them

    async with get_client() as client:
        found = next(s for s in await client.read_deployment_schedules(deployment_id) if s.slug == sid)
        r = await client._client.patch(
            f"/deployments/{deployment_id}/schedules/{found.id}", json={"active": False}
        )
        assert r.status_code == 204
    assert (await scheduler.read_all())[sid].parameters == {}  # Prefect's behaviour, documented

    plan = await sync_schedules(flow_settings, scheduler)
    assert plan.restore == {sid: params}
    restored = (await scheduler.read_all())[sid]
    assert restored.parameters == params and restored.active is False
    assert (await sync_schedules(flow_settings, scheduler)).restore == {}
    # A Prefect schedule without a row (its create failed half way) is removed.
    await scheduler.create(Planned("sch_norow", Timing("0 9 * * 1", None, "UTC"), True, params))
    assert "sch_norow" in (await sync_schedules(flow_settings, scheduler)).orphans
    assert "sch_norow" not in await scheduler.read_all()


async def test_a_run_of_a_paused_schedule_launches_nothing(flow_engine: Engine) -> None:
    """A run planned before the pause (late, or already pending: Prefect removes only future
    runs) created a campaign anyway."""
    from sqlalchemy import func, select

    from core import schedules
    from core.db import session_scope
    from flows.launch_campaign import launch_campaign
    from flows.schedules import PrefectScheduler
    from models import Campaign

    await _register()
    tenant = make_tenant(flow_engine, name="paused-run")
    sid = "sch_paused_run"
    params = _params(tenant, sid)
    with session_scope(flow_engine) as session:
        schedules.insert(
            session, schedule_id=sid, account_id=tenant.account_id, name="weekly", parameters=params
        )
    scheduler = PrefectScheduler()
    await scheduler.create(Planned(sid, Timing("0 9 * * 1", None, "UTC"), True, params))
    assert await scheduler.set_active(sid, False)
    fields = {k: v for k, v in params.items()}
    assert await launch_campaign(**fields) is None
    with session_scope(flow_engine) as session:
        made = session.execute(
            select(func.count()).select_from(Campaign).where(Campaign.schedule_id == sid)  # type: ignore[arg-type]
        ).scalar()
    assert made == 0
    assert await scheduler.set_active(sid, True)
    cid = await launch_campaign(**fields)
    assert isinstance(cid, str) and cid.startswith("cmp_")
