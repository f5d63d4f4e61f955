"""Accounts and their API keys (stored hashed, shown once)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session, select

from core import credits
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
    key = create_api_key(session, account_id=account.id)
    if credits_amount:
        credits.add_credits(session, account_id=account.id, amount=credits_amount)
    return NewAccount(account_id=account.id, api_key=key)


def create_api_key(session: Session, *, account_id: str) -> str:
    """Issue a new API key for an account; returns the plain key (never stored)."""
    key = new_api_key()
    session.add(
        ApiKey(
            id=new_id("key"),
            account_id=account_id,
            key_hash=hash_api_key(key),
            prefix=key[:10],
            created_at=utcnow(),
        )
    )
    session.flush()
    return key


def account_for_key(session: Session, *, key: str) -> Account | None:
    """The account owning a non-revoked API key, or None."""
    row = session.exec(
        select(Account)
        .join(ApiKey, ApiKey.account_id == Account.id)  # type: ignore[arg-type]
        .where(ApiKey.key_hash == hash_api_key(key), ApiKey.revoked_at == None)  # noqa: E711
    ).first()
    return row


def get_account(session: Session, account_id: str) -> Account | None:
    """An account by id."""
    return session.get(Account, account_id)
