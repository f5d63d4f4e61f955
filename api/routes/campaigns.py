"""Campaign routes: create (idempotent), edit, get, list, pause, resume, cancel, retry, and
per-message records. Every status change is `core.lifecycle`'s."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from api.deps import AccountId, Paging, in_db, page_body, state
from api.errors import AUTH_ERRORS, error_responses
from api.serialize import campaign_out, message_out
from core import attempts, campaigns, counts, idempotency, ledger, lifecycle, retries, runs
from core.errors import InvalidRequest
from models import Campaign, CampaignStatus, Channel, MessageStatus
from models.public import CampaignPublic, MessagePublic, Page
from models.schemas import CampaignCreate, CampaignRetry, CampaignUpdate

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"])
log = logging.getLogger("campaigns.api")
# A pause or cancel answers once every live sender has seen it (they look 4 times a second).
STOP_WAIT_S = 2.0
SETTLE_WAIT_S = 3.0


def _one(session: Session, account_id: str, campaign_id: str) -> dict[str, Any]:
    campaign = campaigns.get_campaign(session, account_id=account_id, campaign_id=campaign_id)
    return campaign_out(campaign, counts.campaign_counts(session, [campaign])[campaign.id])


IdempotencyKey = Annotated[
    str | None,
    Header(
        description="Makes the create safe to retry: the same key and body within 24 h return the "
        "original response; the same key with another body is 409.",
    ),
]
_READ = error_responses(*AUTH_ERRORS, 404)
_CONTROL = error_responses(*AUTH_ERRORS, 404, 409)


@router.post(
    "",
    status_code=201,
    response_model=CampaignPublic,
    responses=error_responses(*AUTH_ERRORS, 404, 409, 422),
)
async def create_campaign(
    request: Request, account_id: AccountId, data: CampaignCreate, idempotency_key: IdempotencyKey = None
) -> JSONResponse:
    """Create a campaign, hold its credits and start (or schedule) its flow run."""
    raw = await request.json()
    prepared: list[campaigns.PreparedCampaign] = []

    async def _prepare() -> None:
        # Checks and pricing read only (a big list is streamed without holding the write lock);
        # the insert and the credit hold are one short write transaction.
        prepared.append(
            await in_db(
                request,
                lambda s: campaigns.prepare_campaign(s, account_id=account_id, data=data),
                write=False,
            )
        )

    def _insert(session: Session) -> dict[str, Any]:
        cap = state(request).settings.api.max_open_campaigns
        return campaign_out(campaigns.insert_campaign(session, prepared[0], max_open=cap), {})

    status_code, body, created = await _idempotent(
        request, account_id, idempotency_key, "/v1/campaigns", raw, _insert, prepare=_prepare
    )
    if created:
        await _launch_body(request, body, account_id)
    return JSONResponse(status_code=status_code, content=body)


async def _idempotent(
    request: Request,
    account_id: str,
    key: str | None,
    path: str,
    raw: Any,
    create: Callable[[Session], dict[str, Any]],
    *,
    prepare: Callable[[], Awaitable[None]] | None = None,
) -> tuple[int, dict[str, Any], bool]:
    """Run a create once per Idempotency-Key (24 h): a replay returns the stored response, the
    same key with another body is 409. Returns (status, body, created now)."""
    if key is not None and not 1 <= len(key) <= 255:
        raise InvalidRequest("Idempotency-Key must be 1-255 characters")
    digest = idempotency.request_hash("POST", path, raw)

    def _replay(session: Session) -> tuple[int, dict[str, Any]] | None:
        if not key:
            return None
        record = idempotency.find(session, account_id=account_id, key=key, digest=digest)
        return (record.status_code, record.response) if record is not None else None

    def _insert(session: Session) -> tuple[int, dict[str, Any], bool]:
        replayed = _replay(session)
        if replayed is not None:
            return (*replayed, False)
        body = create(session)
        if key:
            idempotency.store(
                session, account_id=account_id, key=key, digest=digest, status_code=201, response=body
            )
        return 201, body, True

    replayed = await in_db(request, _replay, write=False)
    if replayed is not None:
        return (*replayed, False)
    if prepare is not None:
        await prepare()
    try:
        return await in_db(request, _insert)
    except IntegrityError:
        # A concurrent request with the same key won the race: replay its response.
        return await in_db(request, _insert)


async def _launch_body(request: Request, body: dict[str, Any], account_id: str) -> None:
    """Start the flow run of a campaign just created (its object is `body`)."""
    scheduled = body["scheduled_at"]
    when = datetime.fromisoformat(scheduled.replace("Z", "+00:00")) if scheduled else None
    run_id = await _launch(request, body["id"], body["channel"], when, account_id, name=body["name"])
    if run_id:
        body["flow_run_id"] = run_id


async def _launch(
    request: Request,
    campaign_id: str,
    channel: str,
    scheduled_at: datetime | None,
    account_id: str,
    key: str | None = None,
    name: str | None = None,
    schedule_id: str | None = None,
) -> str | None:
    """Create the flow run; on failure the reconciler retries (the campaign stays as it is)."""
    try:
        flow_run_id = await state(request).launcher.launch(
            campaign_id=campaign_id,
            account_id=account_id,
            channel=channel,
            scheduled_at=scheduled_at,
            key=key,
            name=name,
            schedule_id=schedule_id,
        )
    except Exception as exc:
        log.warning("could not create the flow run of %s (%s); the reconciler will retry", campaign_id, exc)
        return None
    await in_db(request, lambda s: runs.record_flow_run(s, campaign_id=campaign_id, flow_run_id=flow_run_id))
    return flow_run_id


@router.get("", response_model=Page[CampaignPublic], responses=error_responses(*AUTH_ERRORS))
async def list_campaigns(
    request: Request,
    account_id: AccountId,
    paging: Paging,
    status: Annotated[CampaignStatus | None, Query()] = None,
    channel: Annotated[Channel | None, Query()] = None,
    schedule_id: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    """A page of the account's campaigns, newest first (optionally by status, channel, schedule)."""

    def _list(session: Session) -> dict[str, Any]:
        rows, total = campaigns.list_campaigns(
            session,
            account_id=account_id,
            page=paging.page,
            per_page=paging.per_page,
            status=status.value if status else None,
            channel=channel.value if channel else None,
            schedule_id=schedule_id,
        )
        found = counts.campaign_counts(session, rows)
        return page_body([campaign_out(c, found[c.id]) for c in rows], paging, total)

    return await in_db(request, _list, write=False)


@router.get("/{campaign_id}", response_model=CampaignPublic, responses=_READ)
async def get_campaign(request: Request, account_id: AccountId, campaign_id: str) -> dict[str, Any]:
    """One campaign with its live counts."""
    return await in_db(request, lambda s: _one(s, account_id, campaign_id), write=False)


@router.patch(
    "/{campaign_id}", response_model=CampaignPublic, responses=error_responses(*AUTH_ERRORS, 404, 409, 422)
)
async def edit_campaign(
    request: Request, account_id: AccountId, campaign_id: str, data: CampaignUpdate
) -> dict[str, Any]:
    """Edit a draft or scheduled campaign; re-priced, hold adjusted, flow run moved."""
    campaign, prepared = await in_db(
        request,
        lambda s: campaigns.prepare_edit(s, account_id=account_id, campaign_id=campaign_id, data=data),
        write=False,
    )
    updated = await in_db(
        request, lambda s: campaigns.apply_edit(s, campaign=campaign, data=data, prepared=prepared)
    )
    if "scheduled_at" in data.model_fields_set and updated.flow_run_id:
        try:
            await state(request).launcher.reschedule(
                flow_run_id=updated.flow_run_id, scheduled_at=updated.scheduled_at
            )
        except Exception:  # the run still waits in-process for the new time before sending
            log.exception("could not move flow run %s to the new time", updated.flow_run_id)
    return await in_db(request, lambda s: _one(s, account_id, campaign_id), write=False)


@router.post("/{campaign_id}/pause", response_model=CampaignPublic, responses=_CONTROL)
async def pause_campaign(request: Request, account_id: AccountId, campaign_id: str) -> dict[str, Any]:
    """Pause: no new provider request starts once this has answered; credits stay held."""

    def _pause(session: Session) -> tuple[str, Campaign]:
        campaign = campaigns.get_campaign(session, account_id=account_id, campaign_id=campaign_id)
        return campaign.status, lifecycle.pause(session, campaign=campaign)

    was, campaign = await in_db(request, _pause)
    if was != CampaignStatus.paused:
        if campaign.flow_run_id and was in (CampaignStatus.draft, CampaignStatus.scheduled):
            await _quietly(state(request).launcher.pause(flow_run_id=campaign.flow_run_id), "pausing the run")
        await _until_senders_stopped(request, campaign)
    return await in_db(request, lambda s: _one(s, account_id, campaign_id), write=False)


@router.post("/{campaign_id}/resume", response_model=CampaignPublic, responses=_CONTROL)
async def resume_campaign(request: Request, account_id: AccountId, campaign_id: str) -> dict[str, Any]:
    """Resume a paused campaign: sending goes on with the unsent messages only."""

    def _resume(session: Session) -> Campaign:
        campaign = campaigns.get_campaign(session, account_id=account_id, campaign_id=campaign_id)
        return lifecycle.resume(session, campaign=campaign)

    campaign = await in_db(request, _resume)
    launcher = state(request).launcher
    resumed = False
    run_id = campaign.flow_run_id
    if run_id:
        try:
            resumed = await launcher.resume(flow_run_id=run_id, scheduled_at=campaign.scheduled_at)
        except Exception:
            log.exception("could not resume flow run %s; the reconciler will", run_id)
            resumed = True  # the reconciler resumes a paused run of a resumed campaign
        if not resumed:  # Prefect will not resume that run (its pause timed out): a new one
            await in_db(
                request,
                lambda s: runs.detach(s, campaign_id=campaign_id, flow_run_id=run_id),
            )
    if not resumed:
        fresh = await in_db(request, lambda s: lifecycle.load(s, campaign_id), write=False)
        await _launch(
            request,
            fresh.id,
            fresh.channel,
            fresh.scheduled_at,
            account_id,
            key=runs.launch_key(fresh),
            name=fresh.name,
            schedule_id=fresh.schedule_id,
        )
    return await in_db(request, lambda s: _one(s, account_id, campaign_id), write=False)


@router.post("/{campaign_id}/cancel", response_model=CampaignPublic, responses=_CONTROL)
async def cancel_campaign(request: Request, account_id: AccountId, campaign_id: str) -> dict[str, Any]:
    """Cancel: no new provider request starts once this has answered; unsent messages fail
    `cancelled` and their credits are released."""

    def _cancel(session: Session) -> Campaign:
        campaign = campaigns.get_campaign(session, account_id=account_id, campaign_id=campaign_id)
        return lifecycle.cancel(session, campaign=campaign)

    campaign = await in_db(request, _cancel)
    if campaign.flow_run_id:
        await _quietly(state(request).launcher.cancel(flow_run_id=campaign.flow_run_id), "cancelling the run")
    await _until_senders_stopped(request, campaign)
    # Settle now if every attempt has ended (the run or the reconciler does it otherwise).
    deadline = time.monotonic() + SETTLE_WAIT_S
    while not await in_db(request, lambda s: _settled_after_cancel(s, campaign_id)):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    return await in_db(request, lambda s: _one(s, account_id, campaign_id), write=False)


def _settled_after_cancel(session: Session, campaign_id: str) -> bool:
    if lifecycle.load(session, campaign_id).settled_at is not None:
        return True
    return ledger.finalize_stopped(session, campaign_id=campaign_id, cancelled=True)


async def _until_senders_stopped(request: Request, campaign: Campaign) -> None:
    """Wait (a second or so at most) until every live attempt of the campaign has seen the new
    control version: its senders check that flag before each provider request."""
    deadline = time.monotonic() + STOP_WAIT_S
    while time.monotonic() < deadline:
        unaware = await in_db(
            request,
            lambda s: attempts.unaware_attempts(s, campaign_id=campaign.id, version=campaign.control_version),
            write=False,
        )
        if not unaware:
            return
        await asyncio.sleep(0.05)
    log.warning("campaign %s: some senders did not confirm the stop in time", campaign.id)


async def _quietly(call: Any, what: str) -> None:
    try:
        await call
    except Exception:  # the run notices the campaign's status itself; the reconciler mends the rest
        log.exception("%s failed", what)


@router.post(
    "/{campaign_id}/retry",
    status_code=201,
    response_model=CampaignPublic,
    responses=error_responses(*AUTH_ERRORS, 404, 409, 422),
)
async def retry_campaign(
    request: Request,
    account_id: AccountId,
    campaign_id: str,
    retry: Annotated[CampaignRetry | None, Body()] = None,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """A new campaign for the original's failures that another try may pass (body optional)."""
    data = retry or CampaignRetry()
    raw = data.model_dump(mode="json", exclude_unset=True)
    path = f"/v1/campaigns/{campaign_id}/retry"

    def _create(session: Session) -> dict[str, Any]:
        retry = retries.create_retry(
            session, account_id=account_id, campaign_id=campaign_id, error_codes=data.error_codes
        )
        return campaign_out(retry, {"pending": retry.total_recipients})

    status_code, body, created = await _idempotent(request, account_id, idempotency_key, path, raw, _create)
    if created:
        await _launch_body(request, body, account_id)
    return JSONResponse(status_code=status_code, content=body)


@router.get("/{campaign_id}/messages", response_model=Page[MessagePublic], responses=_READ)
async def list_messages(
    request: Request,
    account_id: AccountId,
    campaign_id: str,
    paging: Paging,
    status: Annotated[MessageStatus | None, Query()] = None,
) -> dict[str, Any]:
    """Per-recipient records of a campaign."""

    def _list(session: Session) -> dict[str, Any]:
        rows, total = campaigns.list_messages(
            session,
            account_id=account_id,
            campaign_id=campaign_id,
            status=status.value if status else None,
            page=paging.page,
            per_page=paging.per_page,
        )
        return page_body([message_out(m) for m in rows], paging, total)

    return await in_db(request, _list, write=False)
