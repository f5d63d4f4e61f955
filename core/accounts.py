"""Accounts and their API keys (stored hashed, shown once)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from core import credits
from core.errors import NotFound
from core.ids import hash_api_key, new_api_key, new_id
from core.timeutil import utcnow
from models import Account, ApiKey


@dataclass(frozen=True)
class NewAccount:
    account_id: str
    api_key: str


def create_account(session: Session, *, name: str, credits_amount: int = 0) -> NewAccount:
    """Create an account with one API key and an optional opening credit."""
    now = utcnow()
    account = Account(id=new_id("acc"), name=name, created_at=now)
    session.add(account)
    session.flush()
    _row, key = create_api_key(session, account_id=account.id)
    if credits_amount:
        credits.add_credits(session, account_id=account.id, amount=credits_amount)
    return NewAccount(account_id=account.id, api_key=key)


# The key's first characters, shown in lists so a person can tell keys apart.
PREFIX_LEN = 8
# last_used_at is written at most this often per key (authentication reads, it rarely writes).
LAST_USED_RESOLUTION = timedelta(minutes=1)


def create_api_key(session: Session, *, account_id: str, name: str | None = None) -> tuple[ApiKey, str]:
    """Issue a new API key for an account; returns its row and the plain key (never stored)."""
    key = new_api_key()
    row = ApiKey(
        id=new_id("key"),
        account_id=account_id,
        key_hash=hash_api_key(key),
        prefix=key[:PREFIX_LEN],
        name=name,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row, key


def list_api_keys(
    session: Session, *, account_id: str, page: int = 1, per_page: int = 100
) -> tuple[list[ApiKey], int]:
    """An account's keys, newest first (revoked ones included, marked)."""
    where = ApiKey.account_id == account_id
    total = session.exec(select(func.count()).select_from(ApiKey).where(where)).one()
    rows = session.exec(
        select(ApiKey)
        .where(where)
        .order_by(col(ApiKey.created_at).desc(), col(ApiKey.id).desc())
        .offset((page - 1) * per_page)
        .limit(per_page)
    ).all()
    return list(rows), int(total)


def revoke_api_key(session: Session, *, key_id: str, account_id: str | None = None) -> ApiKey:
    """Revoke a key (idempotent); `account_id` confines it to that account (404 otherwise)."""
    row = session.get(ApiKey, key_id)
    if row is None or (account_id is not None and row.account_id != account_id):
        raise NotFound("API key not found")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.add(row)
        session.flush()
    return row


@dataclass(frozen=True)
class KeyOwner:
    account_id: str
    key_id: str
    last_used_at: datetime | None

    def needs_touch(self, now: datetime) -> bool:
        """Whether last_used_at is due to be written again."""
        return self.last_used_at is None or now - self.last_used_at >= LAST_USED_RESOLUTION


def owner_of_key(session: Session, *, key: str) -> KeyOwner | None:
    """The account and key row of a non-revoked API key, or None."""
    row = session.exec(
        select(ApiKey.account_id, ApiKey.id, ApiKey.last_used_at).where(
            ApiKey.key_hash == hash_api_key(key), col(ApiKey.revoked_at).is_(None)
        )
    ).first()
    return None if row is None else KeyOwner(row[0], row[1], row[2])


def touch_api_key(session: Session, *, key_id: str, now: datetime | None = None) -> None:
    """Record that a key was used (a no-op if another process just did)."""
    now = now or utcnow()
    session.execute(
        update(ApiKey)
        .where(col(ApiKey.id) == key_id)
        .where((col(ApiKey.last_used_at).is_(None)) | (col(ApiKey.last_used_at) < now - LAST_USED_RESOLUTION))
        .values(last_used_at=now)
    )


def account_for_key(session: Session, *, key: str) -> Account | None:
    """The account owning a non-revoked API key, or None."""
    owner = owner_of_key(session, key=key)
    return None if owner is None else session.get(Account, owner.account_id)


def get_account(session: Session, account_id: str) -> Account | None:
    """An account by id."""
    return session.get(Account, account_id)
