"""Event webhook endpoints of an account (SPEC §9)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from sqlmodel import Session

from api.deps import AccountId, Paging, in_db, page_body, state
from api.errors import AUTH_ERRORS, error_responses
from core import webhooks
from models.public import Page
from models.webhooks_public import WebhookEndpointCreate, WebhookEndpointCreated, WebhookEndpointPublic

router = APIRouter(prefix="/v1/webhook-endpoints", tags=["event webhooks"])


@router.post(
    "",
    status_code=201,
    response_model=WebhookEndpointCreated,
    responses=error_responses(*AUTH_ERRORS, 422),
)
async def create_webhook_endpoint(
    request: Request, account_id: AccountId, body: WebhookEndpointCreate
) -> dict[str, Any]:
    """Subscribe a URL to events; the answer shows the signing secret, this once."""
    allow_private = state(request).settings.webhooks.allow_private

    def _create(session: Session) -> dict[str, Any]:
        endpoint = webhooks.create_endpoint(
            session, account_id=account_id, url=body.url, events=body.events, allow_private=allow_private
        )
        return {**webhooks.endpoint_object(endpoint), "secret": endpoint.secret}

    return await in_db(request, _create)


@router.get("", response_model=Page[WebhookEndpointPublic], responses=error_responses(*AUTH_ERRORS))
async def list_webhook_endpoints(request: Request, account_id: AccountId, paging: Paging) -> dict[str, Any]:
    """The account's endpoints, newest first (without their secrets)."""

    def _list(session: Session) -> dict[str, Any]:
        rows, total = webhooks.list_endpoints(
            session, account_id=account_id, page=paging.page, per_page=paging.per_page
        )
        return page_body([webhooks.endpoint_object(e) for e in rows], paging, total)

    return await in_db(request, _list, write=False)


@router.delete(
    "/{endpoint_id}",
    status_code=204,
    response_class=Response,
    responses=error_responses(*AUTH_ERRORS, 404),
)
async def delete_webhook_endpoint(request: Request, account_id: AccountId, endpoint_id: str) -> Response:
    """Stop sending events to an endpoint; what it had still to receive is given up."""
    await in_db(
        request, lambda s: webhooks.delete_endpoint(s, account_id=account_id, endpoint_id=endpoint_id)
    )
    return Response(status_code=204)
