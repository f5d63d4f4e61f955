"""An account's API keys (SPEC §9): list, create (the key shown once), revoke."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request, Response
from pydantic import ConfigDict, Field, StrictStr
from sqlmodel import Session

from api.deps import AccountId, Paging, in_db, page_body, state
from api.errors import AUTH_ERRORS, error_responses
from core import accounts
from core.timeutil import iso_z
from models import ApiKey
from models.public import ApiKeyCreated, ApiKeyPublic, Page
from models.schemas import _Body

router = APIRouter(prefix="/v1/api-keys", tags=["api keys"])


class ApiKeyCreate(_Body):
    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [{"name": "ci deploys"}]})

    name: StrictStr | None = Field(default=None, min_length=1, max_length=200)


def key_out(row: ApiKey) -> dict[str, Any]:
    """A key as listed (never the key itself)."""
    return {
        "id": row.id,
        "name": row.name,
        "prefix": row.prefix[: accounts.PREFIX_LEN],
        "created_at": iso_z(row.created_at),
        "last_used_at": iso_z(row.last_used_at),
        "revoked_at": iso_z(row.revoked_at),
    }


@router.get("", response_model=Page[ApiKeyPublic], responses=error_responses(*AUTH_ERRORS))
async def list_api_keys(request: Request, account_id: AccountId, paging: Paging) -> dict[str, Any]:
    """The account's keys, newest first, revoked ones included."""

    def _list(session: Session) -> dict[str, Any]:
        rows, total = accounts.list_api_keys(
            session, account_id=account_id, page=paging.page, per_page=paging.per_page
        )
        return page_body([key_out(r) for r in rows], paging, total)

    return await in_db(request, _list, write=False)


@router.post("", status_code=201, response_model=ApiKeyCreated, responses=error_responses(*AUTH_ERRORS))
async def create_api_key(
    request: Request, account_id: AccountId, data: Annotated[ApiKeyCreate | None, Body()] = None
) -> dict[str, Any]:
    """A new key for this account; `api_key` is in this response only."""
    name = data.name if data else None
    row, key = await in_db(request, lambda s: accounts.create_api_key(s, account_id=account_id, name=name))
    return {**key_out(row), "api_key": key}


@router.delete("/{key_id}", status_code=204, responses=error_responses(*AUTH_ERRORS, 404))
async def revoke_api_key(request: Request, account_id: AccountId, key_id: str) -> Response:
    """Revoke a key: it is refused within CAMPAIGNS_API__KEY_CACHE_S seconds by every API
    process (at once by this one)."""
    await in_db(request, lambda s: accounts.revoke_api_key(s, key_id=key_id, account_id=account_id))
    state(request).keys.forget_all()
    return Response(status_code=204)
