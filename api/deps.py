"""Dependencies: the database unit of work, authentication + rate limit, pagination, bodies."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from core import accounts
from core.db import session_scope
from core.errors import InvalidRequest, RateLimited, Unauthorized
from core.ids import hash_api_key
from core.launcher import Launcher
from core.logs import account_id_var
from core.ratelimit import Buckets, TokenBuckets, retry_after_header
from core.schedules import Scheduler
from core.settings import Settings
from core.timeutil import utcnow
from core.validation import schema_error

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


class KeyCache:
    """API key → account id for `ttl` seconds, so most requests authenticate without a query
    (a revoked key stops working within `ttl`). Bounded; unknown keys are never cached."""

    def __init__(self, ttl: float, size: int = 10_000) -> None:
        self.ttl, self.size = ttl, size
        self._entries: dict[str, tuple[str, float]] = {}

    def get(self, key: str) -> str | None:
        entry = self._entries.get(key)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def forget_all(self) -> None:
        """Drop every entry (after a revoke: this process refuses the key at once)."""
        self._entries.clear()

    def put(self, key: str, account_id: str) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= self.size:
            self._entries.clear()
        self._entries[key] = (account_id, time.monotonic() + self.ttl)


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    read_engine: Engine
    launcher: Launcher
    scheduler: Scheduler
    buckets: Buckets
    keys: KeyCache


def state(request: Request) -> AppState:
    """The application's shared state."""
    return request.app.state.campaigns  # type: ignore[no-any-return]


async def in_db(request: Request, fn: Callable[[Session], T], *, write: bool = True) -> T:
    """Run `fn(session)` in one transaction on a worker thread (`write=False`: never waits for
    a writer on SQLite)."""
    app_state = state(request)
    engine = app_state.engine if write else app_state.read_engine

    def _run() -> T:
        with session_scope(engine) as session:
            return fn(session)

    return await run_in_threadpool(_run)


# Declares the `bearer` security scheme in OpenAPI; the header is checked below (SPEC's 401 body).
bearer = HTTPBearer(scheme_name="bearer", auto_error=False, description="Authorization: Bearer <api_key>")


async def current_account_id(
    request: Request, _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None
) -> str:
    """Authenticate the bearer key, then apply the account's rate limit (SPEC order)."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key or len(key) > 200:
        raise Unauthorized("missing or malformed Authorization header; use 'Bearer <api_key>'")
    app_state = state(request)
    buckets = app_state.buckets
    cache_key = hash_api_key(key)  # the cache holds no raw keys
    account_id = app_state.keys.get(cache_key)
    if account_id is not None and isinstance(buckets, TokenBuckets):
        wait = buckets.take(account_id)  # in memory: no thread, no database
    else:

        def _authenticate(session: Session) -> tuple[accounts.KeyOwner | None, float]:
            owner = accounts.owner_of_key(session, key=key)
            return (None, 0.0) if owner is None else (owner, buckets.take(owner.account_id))

        owner, wait = await in_db(request, _authenticate, write=False)
        if owner is None:
            raise Unauthorized("unknown or revoked API key")
        account_id = owner.account_id
        if owner.needs_touch(utcnow()):  # at most once a minute per key
            await in_db(request, lambda s: accounts.touch_api_key(s, key_id=owner.key_id))
        app_state.keys.put(cache_key, account_id)
    account_id_var.set(account_id)
    if wait > 0:
        raise RateLimited("too many requests; slow down", retry_after=retry_after_header(wait))
    return account_id


AccountId = Annotated[str, Depends(current_account_id)]


@dataclass(frozen=True)
class Page:
    page: int
    per_page: int


def pagination(
    page: Annotated[int, Query(ge=1, le=10**9, description="1-based page number.")] = 1,
    per_page: Annotated[int, Query(ge=1, le=100, description="Items per page.")] = 50,
) -> Page:
    """page >= 1 (default 1), per_page 1..100 (default 50); anything else is 400."""
    return Page(page, per_page)


Paging = Annotated[Page, Depends(pagination)]


async def read_json(request: Request, *, allow_empty: bool = False) -> Any:
    """The parsed JSON body (None for an empty one if `allow_empty`), or 400 invalid_request."""
    raw = await request.body()
    if not raw.strip():
        if allow_empty:
            return None
        raise InvalidRequest("request body must be a JSON object")
    try:
        return json.loads(raw)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer over 4,300 digits
        raise InvalidRequest(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest("malformed JSON: nested too deeply") from None


def validate_body(model: type[M], data: Any) -> M:
    """Validate a parsed body against a schema; errors are 400 invalid_request with fields."""
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise schema_error(exc) from None


def page_body(items: list[dict[str, Any]], page: Page, total: int) -> dict[str, Any]:
    """The SPEC list envelope."""
    return {"data": items, "meta": {"page": page.page, "per_page": page.per_page, "total": total}}
