"""Idempotency-Key support: replay the original response of a create for 24 hours."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

from sqlalchemy import delete
from sqlmodel import Session, col

from core.errors import Conflict
from core.timeutil import as_utc, utcnow
from models import IdempotencyRecord

TTL = timedelta(hours=24)


def request_hash(method: str, path: str, body: Any) -> str:
    """A stable hash of what was asked (canonical JSON of the parsed body)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode()).hexdigest()


def find(session: Session, *, account_id: str, key: str, digest: str) -> IdempotencyRecord | None:
    """The stored response for this key, None if unused; Conflict if used with another body."""
    record = session.get(IdempotencyRecord, (account_id, key), populate_existing=True)
    if record is None:
        return None
    if as_utc(record.created_at) < utcnow() - TTL:
        return None  # expired: store() replaces it (reads stay read-only)
    if record.request_hash != digest:
        raise Conflict("Idempotency-Key was already used with a different request", {"idempotency_key": key})
    return record


def store(
    session: Session, *, account_id: str, key: str, digest: str, status_code: int, response: dict[str, Any]
) -> None:
    """Remember a response for this key (in the same transaction as the create)."""
    session.execute(
        delete(IdempotencyRecord).where(
            col(IdempotencyRecord.created_at) < utcnow() - TTL,
            col(IdempotencyRecord.account_id) == account_id,
        )
    )
    session.add(
        IdempotencyRecord(
            account_id=account_id,
            key=key,
            request_hash=digest,
            status_code=status_code,
            response=response,
            created_at=utcnow(),
        )
    )
    session.flush()
