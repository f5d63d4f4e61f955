"""Plain factory functions for tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from core import accounts, contacts, sender_ids
from core.db import session_scope
from models.schemas import ContactCreate


@dataclass
class Tenant:
    account_id: str
    api_key: str
    list_id: str
    sender: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


def make_tenant(
    engine: Engine,
    *,
    credits_amount: int = 1000,
    contacts_n: int = 3,
    channel: str = "sms",
    sender: str = "MYBRAND",
    name: str = "acme",
    phone_base: int = 14155550000,
    **contact_fields: Any,
) -> Tenant:
    """An account with credits, an approved sender ID and a list of `contacts_n` contacts."""
    with session_scope(engine) as session:
        new = accounts.create_account(session, name=name, credits_amount=credits_amount)
        lst = contacts.create_list(session, account_id=new.account_id, name="customers")
        sender_ids.register(session, account_id=new.account_id, channel=channel, value=sender, approved=True)
        for i in range(contacts_n):
            contacts.create_contact(
                session,
                account_id=new.account_id,
                data=ContactCreate(
                    name=f"Customer {i}",
                    phone=f"+{phone_base + i}",
                    email=f"c{i}@example.com",
                    telegram_chat_id=str(1000 + i),
                    slack_user_id=f"U{i:06d}",
                    lists=[lst.id],
                    **contact_fields,
                ),
            )
    return Tenant(new.account_id, new.api_key, lst.id, sender)


def bulk_tenant(
    engine: Engine,
    n: int,
    *,
    credits_amount: int | None = None,
    sender: str = "BULK",
    phone_base: int = 12000000000,
) -> Tenant:
    """An account with an approved SMS sender and a list of `n` contacts, bulk-inserted."""
    from sqlalchemy import insert

    from core.ids import new_id
    from core.timeutil import utcnow
    from models import Contact, ListMembership

    with session_scope(engine) as session:
        new = accounts.create_account(session, name="bulk", credits_amount=credits_amount or 2 * n)
        lst = contacts.create_list(session, account_id=new.account_id, name="bulk")
        sender_ids.register(session, account_id=new.account_id, channel="sms", value=sender, approved=True)
        now = utcnow()
        rows, members = [], []
        for i in range(n):
            cid = new_id("cnt")
            rows.append(
                {
                    "id": cid,
                    "account_id": new.account_id,
                    "name": f"Person {i}",
                    "phone": f"+{phone_base + i}",
                    "attributes": {},
                    "created_at": now,
                    "updated_at": now,
                }
            )
            members.append({"list_id": lst.id, "contact_id": cid, "created_at": now})
        session.execute(insert(Contact.__table__), rows)  # type: ignore[attr-defined]
        session.execute(insert(ListMembership.__table__), members)  # type: ignore[attr-defined]
    return Tenant(new.account_id, new.api_key, lst.id, sender)


def start_campaign(engine: Engine, campaign_id: str) -> None:
    """What a run does before sending: processing, snapshot, hold matching the snapshot."""
    from core import lifecycle, snapshot

    with session_scope(engine) as session:
        lifecycle.due(session, campaign_id=campaign_id)
        snapshot.take_snapshot(session, campaign_id=campaign_id)
        snapshot.adjust_hold(session, campaign_id=campaign_id)
