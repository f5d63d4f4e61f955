"""Recurring campaigns (SPEC §8): schedules of launch-campaign/default, held in Prefect."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request, Response
from sqlmodel import Session

from api.deps import AccountId, Paging, in_db, page_body, state
from api.errors import AUTH_ERRORS, error_responses
from core import schedules
from core.errors import NotFound
from core.schedules import Planned
from models import Schedule
from models.public import Page, SchedulePublic
from models.schemas import ScheduleCreate

router = APIRouter(prefix="/v1/schedules", tags=["schedules"])
log = logging.getLogger("campaigns.api")
_ONE = error_responses(*AUTH_ERRORS, 404, 503)


async def _planned(request: Request, row: Schedule) -> Planned:
    found = (await state(request).scheduler.read_all()).get(row.id)
    if found is None:  # deleted in the Prefect UI
        raise NotFound(f"schedule {row.id} not found")
    return found


async def _row(request: Request, account_id: str, schedule_id: str) -> Schedule:
    return await in_db(
        request, lambda s: schedules.get_row(s, account_id=account_id, schedule_id=schedule_id), write=False
    )


@router.post(
    "",
    status_code=201,
    response_model=SchedulePublic,
    responses=error_responses(*AUTH_ERRORS, 404, 422, 503),
)
async def create_schedule(request: Request, account_id: AccountId, data: ScheduleCreate) -> dict[str, Any]:
    """Create a recurring campaign: each firing creates and runs a campaign as POST /v1/campaigns
    would (credits are checked at each run)."""
    await in_db(
        request,
        lambda s: schedules.check_campaign(s, account_id=account_id, campaign=data.campaign),
        write=False,
    )
    timing = schedules.timing_of(data)
    schedule_id = schedules.new_schedule_id()
    parameters = schedules.parameters_of(
        account_id=account_id, schedule_id=schedule_id, campaign=data.campaign
    )
    row = await in_db(
        request,
        lambda s: schedules.insert(
            s,
            schedule_id=schedule_id,
            account_id=account_id,
            name=data.name,
            parameters=parameters,
            max_schedules=state(request).settings.api.max_schedules,
        ),
    )
    planned = Planned(slug=row.id, timing=timing, active=True, parameters=parameters)
    scheduler = state(request).scheduler
    try:
        await scheduler.create(planned)
        found = (await scheduler.read_all()).get(row.id, planned)
    except BaseException:
        # Nothing half made: without its row a Prefect schedule that did get created launches
        # nothing, and the next listing removes it.
        await in_db(request, lambda s: schedules.delete_row(s, schedule_id=row.id))
        raise
    return schedules.schedule_object(row, found)


@router.get("", response_model=Page[SchedulePublic], responses=error_responses(*AUTH_ERRORS, 503))
async def list_schedules(request: Request, account_id: AccountId, paging: Paging) -> dict[str, Any]:
    """A page of the account's schedules, newest first."""
    planned = await state(request).scheduler.read_all()

    def _list(session: Session) -> tuple[list[Schedule], int, set[str]]:
        rows, total = schedules.list_rows(
            session, account_id=account_id, only=set(planned), page=paging.page, per_page=paging.per_page
        )
        return rows, total, set(planned) - schedules.known_ids(session, set(planned))

    rows, total, orphans = await in_db(request, _list, write=False)
    for slug in orphans:  # a create that failed after Prefect had taken the schedule
        try:
            await state(request).scheduler.delete(slug)
        except Exception as exc:
            log.warning("could not remove the orphan schedule %s: %s", slug, exc)
    return page_body([schedules.schedule_object(r, planned[r.id]) for r in rows], paging, total)


@router.get("/{schedule_id}", response_model=SchedulePublic, responses=_ONE)
async def get_schedule(request: Request, account_id: AccountId, schedule_id: str) -> dict[str, Any]:
    """One schedule, with its next run as Prefect will start it."""
    row = await _row(request, account_id, schedule_id)
    return schedules.schedule_object(row, await _planned(request, row))


@router.delete("/{schedule_id}", status_code=204, response_class=Response, responses=_ONE)
async def delete_schedule(request: Request, account_id: AccountId, schedule_id: str) -> Response:
    """Delete a schedule and its future runs; the campaigns it created stay."""
    row = await _row(request, account_id, schedule_id)
    await state(request).scheduler.delete(row.id)
    await in_db(request, lambda s: schedules.delete_row(s, schedule_id=row.id))
    return Response(status_code=204)


async def _set_active(request: Request, account_id: str, schedule_id: str, active: bool) -> dict[str, Any]:
    row = await _row(request, account_id, schedule_id)
    scheduler = state(request).scheduler
    if not await scheduler.set_active(row.id, active):
        raise NotFound(f"schedule {row.id} not found")
    if schedules.emptied((await _planned(request, row)).parameters):  # emptied in the UI meanwhile
        await scheduler.set_parameters(row.id, row.parameters)
    return schedules.schedule_object(row, await _planned(request, row))


@router.post("/{schedule_id}/pause", response_model=SchedulePublic, responses=_ONE)
async def pause_schedule(request: Request, account_id: AccountId, schedule_id: str) -> dict[str, Any]:
    """Stop firing (Prefect removes the runs it had planned) until resumed."""
    return await _set_active(request, account_id, schedule_id, False)


@router.post("/{schedule_id}/resume", response_model=SchedulePublic, responses=_ONE)
async def resume_schedule(request: Request, account_id: AccountId, schedule_id: str) -> dict[str, Any]:
    """Fire again from the next time the schedule gives."""
    return await _set_active(request, account_id, schedule_id, True)
