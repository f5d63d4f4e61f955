"""Campaign routes: create (idempotent), get, list, cancel, per-message records."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from api.deps import AccountId, Paging, in_db, page_body, read_json, state, validate_body
from api.serialize import campaign_out, message_out
from core import campaigns, idempotency
from core.errors import InvalidRequest
from models import CampaignStatus, Channel, MessageStatus
from models.schemas import CampaignCreate

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"])
log = logging.getLogger("campaigns.api")


def _one(session: Session, account_id: str, campaign_id: str) -> dict[str, Any]:
    campaign = campaigns.get_campaign(session, account_id=account_id, campaign_id=campaign_id)
    return campaign_out(campaign, campaigns.campaign_counts(session, [campaign])[campaign.id])


def _enum(value: str | None, enum: Any, name: str) -> str | None:
    if value is None:
        return None
    if value not in {e.value for e in enum}:
        raise InvalidRequest(f"unknown {name} {value!r}", {"field": name})
    return value


@router.post("", status_code=201, response_model=None)
async def create_campaign(
    request: Request, account_id: AccountId, idempotency_key: Annotated[str | None, Header()] = None
) -> JSONResponse:
    """Create a campaign, hold its credits and start (or schedule) its flow run."""
    raw = await read_json(request)
    data = validate_body(CampaignCreate, raw)
    digest = idempotency.request_hash("POST", "/v1/campaigns", raw)
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 255:
        raise InvalidRequest("Idempotency-Key must be 1-255 characters")

    def _replay(session: Session) -> tuple[int, dict[str, Any]] | None:
        if not idempotency_key:
            return None
        record = idempotency.find(session, account_id=account_id, key=idempotency_key, digest=digest)
        return (record.status_code, record.response) if record is not None else None

    def _insert(session: Session) -> tuple[int, dict[str, Any], bool]:
        replayed = _replay(session)
        if replayed is not None:
            return (*replayed, False)
        campaign = campaigns.insert_campaign(session, prepared)
        body = campaign_out(campaign, {})
        if idempotency_key:
            idempotency.store(
                session,
                account_id=account_id,
                key=idempotency_key,
                digest=digest,
                status_code=201,
                response=body,
            )
        return 201, body, True

    replayed = await in_db(request, _replay, write=False)
    if replayed is not None:
        return JSONResponse(status_code=replayed[0], content=replayed[1])
    # Checks and pricing read only (a big list is streamed without holding the write lock);
    # the insert and the credit hold are one short write transaction.
    prepared = await in_db(
        request, lambda s: campaigns.prepare_campaign(s, account_id=account_id, data=data), write=False
    )
    try:
        status_code, body, created = await in_db(request, _insert)
    except IntegrityError:
        # A concurrent request with the same key won the race: replay its response.
        status_code, body, created = await in_db(request, _insert)
    if created:
        await _launch(request, body, account_id)
    return JSONResponse(status_code=status_code, content=body)


async def _launch(request: Request, body: dict[str, Any], account_id: str) -> None:
    """Create the flow run; on failure the reconciler retries (the campaign stays draft)."""
    scheduled = body["scheduled_at"]
    try:
        flow_run_id = await state(request).launcher.launch(
            campaign_id=body["id"],
            account_id=account_id,
            channel=body["channel"],
            scheduled_at=datetime.fromisoformat(scheduled.replace("Z", "+00:00")) if scheduled else None,
        )
    except Exception as exc:
        log.warning("could not create the flow run of %s (%s); the reconciler will retry", body["id"], exc)
        return
    body["flow_run_id"] = flow_run_id
    await in_db(
        request, lambda s: campaigns.record_flow_run(s, campaign_id=body["id"], flow_run_id=flow_run_id)
    )


@router.get("")
async def list_campaigns(
    request: Request,
    account_id: AccountId,
    paging: Paging,
    status: Annotated[str | None, Query()] = None,
    channel: Annotated[str | None, Query()] = None,
) -> dict[str, Any]:
    """A page of the account's campaigns, newest first."""
    status = _enum(status, CampaignStatus, "status")
    channel = _enum(channel, Channel, "channel")

    def _list(session: Session) -> dict[str, Any]:
        rows, total = campaigns.list_campaigns(
            session,
            account_id=account_id,
            page=paging.page,
            per_page=paging.per_page,
            status=status,
            channel=channel,
        )
        counts = campaigns.campaign_counts(session, rows)
        return page_body([campaign_out(c, counts[c.id]) for c in rows], paging, total)

    return await in_db(request, _list, write=False)


@router.get("/{campaign_id}")
async def get_campaign(request: Request, account_id: AccountId, campaign_id: str) -> dict[str, Any]:
    """One campaign with its live counts."""
    return await in_db(request, lambda s: _one(s, account_id, campaign_id), write=False)


@router.post("/{campaign_id}/cancel")
async def cancel_campaign(request: Request, account_id: AccountId, campaign_id: str) -> dict[str, Any]:
    """Cancel: nothing more is sent and unused credits are released."""

    def _cancel(session: Session) -> dict[str, Any]:
        campaigns.cancel_campaign(session, account_id=account_id, campaign_id=campaign_id)
        return _one(session, account_id, campaign_id)

    body = await in_db(request, _cancel)
    if body.get("flow_run_id"):
        try:
            await state(request).launcher.cancel(flow_run_id=body["flow_run_id"])
        except Exception:
            log.exception(
                "could not cancel flow run %s; the run stops at its next chunk", body["flow_run_id"]
            )
    return body


@router.get("/{campaign_id}/messages")
async def list_messages(
    request: Request,
    account_id: AccountId,
    campaign_id: str,
    paging: Paging,
    status: Annotated[str | None, Query()] = None,
) -> dict[str, Any]:
    """Per-recipient records of a campaign."""
    status = _enum(status, MessageStatus, "status")

    def _list(session: Session) -> dict[str, Any]:
        rows, total = campaigns.list_messages(
            session,
            account_id=account_id,
            campaign_id=campaign_id,
            status=status,
            page=paging.page,
            per_page=paging.per_page,
        )
        return page_body([message_out(m) for m in rows], paging, total)

    return await in_db(request, _list, write=False)
