"""Dependencies: the database unit of work, authentication + rate limit, pagination, bodies."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Query, Request
from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from core import accounts
from core.db import session_scope
from core.errors import InvalidRequest, RateLimited, Unauthorized
from core.ids import hash_api_key
from core.launcher import Launcher
from core.ratelimit import Buckets, TokenBuckets, retry_after_header
from core.settings import Settings

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


async def current_account_id(request: Request) -> str:
    """Authenticate the bearer key, then apply the account's rate limit (SPEC order)."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("missing or malformed Authorization header; use 'Bearer <api_key>'")
    app_state = state(request)
    buckets = app_state.buckets
    cache_key = hash_api_key(key.strip())  # the cache holds no raw keys
    account_id = app_state.keys.get(cache_key)
    if account_id is not None and isinstance(buckets, TokenBuckets):
        wait = buckets.take(account_id)  # in memory: no thread, no database
    else:

        def _authenticate(session: Session) -> tuple[str | None, float]:
            account = accounts.account_for_key(session, key=key.strip())
            return (None, 0.0) if account is None else (account.id, buckets.take(account.id))

        account_id, wait = await in_db(request, _authenticate, write=False)
        if account_id is None:
            raise Unauthorized("unknown API key")
        app_state.keys.put(cache_key, account_id)
    if wait > 0:
        raise RateLimited("too many requests; slow down", retry_after=retry_after_header(wait))
    return account_id


AccountId = Annotated[str, Depends(current_account_id)]


@dataclass(frozen=True)
class Page:
    page: int
    per_page: int


def pagination(
    page: Annotated[str | None, Query()] = None, per_page: Annotated[str | None, Query()] = None
) -> Page:
    """page >= 1 (default 1), per_page 1..100 (default 50); anything else is 400."""

    def parse(name: str, raw: str | None, default: int, low: int, high: int) -> int:
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise InvalidRequest(f"{name} must be an integer", {"field": name}) from None
        if not low <= value <= high:
            raise InvalidRequest(f"{name} must be between {low} and {high}", {"field": name})
        return value

    return Page(parse("page", page, 1, 1, 10**9), parse("per_page", per_page, 50, 1, 100))


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
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"malformed JSON: {exc}") from None


def validate_body(model: type[M], data: Any) -> M:
    """Validate a parsed body against a schema; errors are 400 invalid_request with fields."""
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"]) or None, "message": e["msg"]} for e in exc.errors()
        ]
        first = errors[0]
        raise InvalidRequest(f"{first['field']}: {first['message']}", {"errors": errors}) from None


def page_body(items: list[dict[str, Any]], page: Page, total: int) -> dict[str, Any]:
    """The SPEC list envelope."""
    return {"data": items, "meta": {"page": page.page, "per_page": page.per_page, "total": total}}
