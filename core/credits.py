"""The credit ledger. Every change is an atomic UPDATE guarded in SQL, never read-modify-write.

Invariant: 0 <= reserved <= balance on every account, so `available = balance - reserved >= 0`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from core.errors import InsufficientCredits, NotFound, ValidationFailed
from core.timeutil import utcnow
from models import Account, Campaign, CreditEntry, CreditKind, ErrorCode, Message, MessageStatus


@dataclass(frozen=True)
class Balance:
    balance: int
    reserved: int

    @property
    def available(self) -> int:
        return self.balance - self.reserved


def _entry(session: Session, account_id: str, campaign_id: str | None, kind: str, amount: int) -> None:
    session.add(
        CreditEntry(
            account_id=account_id,
            campaign_id=campaign_id,
            kind=kind,
            amount=amount,
            created_at=utcnow(),
        )
    )


def get_balance(session: Session, account_id: str) -> Balance:
    """Current balance and reservation of an account."""
    account = session.get(Account, account_id, populate_existing=True)
    if account is None:
        raise NotFound(f"account {account_id} not found")
    return Balance(balance=account.balance, reserved=account.reserved)


def add_credits(session: Session, *, account_id: str, amount: int) -> Balance:
    """Top up an account."""
    if amount <= 0:
        raise ValidationFailed("credit amount must be a positive integer")
    result = session.execute(
        update(Account).where(col(Account.id) == account_id).values(balance=Account.balance + amount)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise NotFound(f"account {account_id} not found")
    _entry(session, account_id, None, CreditKind.topup, amount)
    session.flush()
    return get_balance(session, account_id)


def hold(session: Session, *, account_id: str, campaign_id: str, amount: int) -> None:
    """Reserve `amount` for a campaign; raises InsufficientCredits and changes nothing if short."""
    if amount <= 0:
        return
    result = session.execute(
        update(Account)
        .where(col(Account.id) == account_id, col(Account.balance) - col(Account.reserved) >= amount)
        .values(reserved=Account.reserved + amount)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        bal = get_balance(session, account_id)
        raise InsufficientCredits(
            f"this campaign needs {amount} credits; {bal.available} available",
            {"required": amount, "available": bal.available},
        )
    session.execute(
        update(Campaign)
        .where(col(Campaign.id) == campaign_id)
        .values(credits_reserved=Campaign.credits_reserved + amount)
    )
    _entry(session, account_id, campaign_id, CreditKind.hold, amount)


def release(session: Session, *, account_id: str, campaign_id: str, amount: int) -> None:
    """Give back part of a campaign's reservation."""
    if amount <= 0:
        return
    session.execute(
        update(Account).where(col(Account.id) == account_id).values(reserved=Account.reserved - amount)
    )
    session.execute(
        update(Campaign)
        .where(col(Campaign.id) == campaign_id)
        .values(credits_reserved=Campaign.credits_reserved - amount)
    )
    _entry(session, account_id, campaign_id, CreditKind.release, amount)


# Messages that reached the provider, or may have (outcome unknown), are paid for; so are those
# the provider accepted but never reported on (status_timeout).
CHARGEABLE = (MessageStatus.sending, MessageStatus.sent, MessageStatus.delivered, MessageStatus.undelivered)
CHARGEABLE_FAILURES = (ErrorCode.outcome_unknown, ErrorCode.status_timeout)


def chargeable_cost(session: Session, campaign_id: str) -> int:
    """Credits owed for a campaign's messages that reached (or may have reached) the provider."""
    charged = session.exec(
        select(func.coalesce(func.sum(Message.cost), 0)).where(
            Message.campaign_id == campaign_id,
            (col(Message.status).in_(CHARGEABLE))
            | (
                (col(Message.status) == MessageStatus.failed)
                & col(Message.error_code).in_(CHARGEABLE_FAILURES)
            ),
        )
    ).one()
    return int(charged)


def settle(session: Session, *, campaign_id: str) -> bool:
    """Charge what the provider accepted and release the rest, exactly once per campaign."""
    now = utcnow()
    claimed = session.execute(
        update(Campaign)
        .where(col(Campaign.id) == campaign_id, col(Campaign.settled_at).is_(None))
        .values(settled_at=now)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        return False
    campaign = session.get(Campaign, campaign_id, populate_existing=True)
    assert campaign is not None
    reserved = campaign.credits_reserved
    # A reopened (retried) campaign was charged before: charge only what is new.
    charge = min(max(chargeable_cost(session, campaign_id) - campaign.credits_used, 0), reserved)
    session.execute(
        update(Account)
        .where(col(Account.id) == campaign.account_id)
        .values(balance=Account.balance - charge, reserved=Account.reserved - reserved)
    )
    session.execute(
        update(Campaign)
        .where(col(Campaign.id) == campaign_id)
        .values(credits_used=Campaign.credits_used + charge, credits_reserved=0)
    )
    if charge:
        _entry(session, campaign.account_id, campaign_id, CreditKind.charge, charge)
    if reserved - charge:
        _entry(session, campaign.account_id, campaign_id, CreditKind.release, reserved - charge)
    return True
