"""Sender IDs, credits and health."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlmodel import Session

from api.deps import AccountId, Paging, in_db, page_body, state
from api.errors import AUTH_ERRORS, error_response, error_responses
from api.serialize import sender_out
from core import credits, sender_ids
from models.public import CreditsPublic, ErrorBody, Health, Page, SenderIdPublic
from models.schemas import SenderIdCreate

router = APIRouter(tags=["account"])


@router.get("/v1/sender-ids", response_model=Page[SenderIdPublic], responses=error_responses(*AUTH_ERRORS))
async def list_sender_ids(request: Request, account_id: AccountId, paging: Paging) -> dict[str, Any]:
    """The account's sender IDs with their approval status."""

    def _list(session: Session) -> dict[str, Any]:
        rows, total = sender_ids.list_sender_ids(
            session, account_id=account_id, page=paging.page, per_page=paging.per_page
        )
        return page_body([sender_out(s) for s in rows], paging, total)

    return await in_db(request, _list, write=False)


@router.post(
    "/v1/sender-ids",
    status_code=201,
    response_model=SenderIdPublic,
    responses=error_responses(*AUTH_ERRORS, 409, 422),
)
async def create_sender_id(request: Request, account_id: AccountId, data: SenderIdCreate) -> dict[str, Any]:
    """Register a sender ID; it stays pending until an operator approves it."""
    sender = await in_db(
        request,
        lambda s: sender_ids.register(s, account_id=account_id, channel=data.channel.value, value=data.value),
    )
    return sender_out(sender)


@router.get("/v1/credits", response_model=CreditsPublic, responses=error_responses(*AUTH_ERRORS))
async def get_credits(request: Request, account_id: AccountId) -> dict[str, Any]:
    """Balance, reserved (held by open campaigns) and available credits."""
    bal = await in_db(request, lambda s: credits.get_balance(s, account_id), write=False)
    return {"balance": bal.balance, "reserved": bal.reserved, "available": bal.available}


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"model": ErrorBody, "description": "The database or the Prefect API does not answer."}},
)
async def healthz(request: Request) -> Any:
    """200 when the database and the orchestrator answer."""
    try:
        await in_db(request, lambda s: s.execute(text("SELECT 1")).scalar_one(), write=False)
    except Exception:
        return error_response(503, "unavailable", "database is not reachable")
    if not await state(request).launcher.healthy():
        return error_response(503, "unavailable", "the Prefect API is not reachable")
    return JSONResponse({"status": "ok"})
