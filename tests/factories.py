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
