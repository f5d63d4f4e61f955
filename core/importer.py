"""Bulk contact import: JSON rows or CSV, upsert by phone, per-row rejections with reasons.

One bad row never rejects the good ones. Phones are normalised to E.164 with `phonenumbers`.
Work is set-based: one lookup of existing phones per batch, bulk inserts and updates."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import phonenumbers
from sqlalchemy import bindparam, insert, select, update
from sqlmodel import Session, col

from core.contacts import get_list
from core.errors import ValidationFailed
from core.ids import new_id
from core.timeutil import utcnow
from core.validation import is_email
from core.zones import is_zone
from models import Contact, ContactList, ListMembership
from models.schemas import has_nul

MAX_ROWS = 100_000
BATCH = 5_000
FIELDS = ("name", "phone", "email", "telegram_chat_id", "slack_user_id", "timezone")


@dataclass
class ImportResult:
    created: int = 0
    updated: int = 0
    rejected_rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return len(self.rejected_rows)

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "updated": self.updated,
            "rejected": self.rejected,
            "rejected_rows": self.rejected_rows,
        }


def normalize_phone(raw: str) -> str | None:
    """E.164 for a possible international number (`+…`), else None."""
    text = raw.strip()
    if not text.startswith("+"):
        return None
    try:
        number = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def rows_from_csv(text: str) -> list[dict[str, Any]]:
    """CSV with a header: name, phone, email, telegram_chat_id, slack_user_id, timezone, lists (ids
    separated by ';' or spaces), and `attributes.KEY` (or any other) columns as attributes."""
    rows = []
    for raw in csv.DictReader(io.StringIO(text)):
        row: dict[str, Any] = {"attributes": {}}
        for key, value in raw.items():
            if key is None:
                continue
            key = key.strip()
            value = (value or "").strip()
            if key in FIELDS:
                row[key] = value or None
            elif key == "lists":
                row["lists"] = [part for part in value.replace(";", " ").split() if part]
            elif value:
                row["attributes"][key.removeprefix("attributes.")] = value
        rows.append(row)
    return rows


# Limits of the stored columns and of ContactCreate (SPEC §9): a row over one is rejected alone.
MAX_NAME = 200
MAX_ADDRESS_ID = 64  # telegram_chat_id, slack_user_id: VARCHAR(64)
MAX_ATTRIBUTE_CHARS = 1000
MAX_ATTRIBUTES = 100
ECHO = 64  # characters of a rejected value quoted back


def _quoted(value: Any) -> str:
    """A rejected value as quoted in a reason: repr, cut short."""
    text = repr(value)
    return text if len(text) <= ECHO else text[:ECHO] + "…"


def _address_id(value: Any, field: str) -> tuple[str | None, str | None]:
    """An optional telegram_chat_id / slack_user_id as stored (a string of at most 64), or why not."""
    if value is None or value == "":
        return None, None
    if isinstance(value, int) and not isinstance(value, bool) and field == "telegram_chat_id":
        value = str(value)
    if not isinstance(value, str):
        return None, f"{field} must be a string"
    if len(value) > MAX_ADDRESS_ID:
        return None, f"{field} is longer than {MAX_ADDRESS_ID} characters"
    return value, None


def _attributes(value: Any) -> tuple[dict[str, str] | None, str | None]:
    """The row's attributes (an object of at most 100 strings of at most 1,000), or why not."""
    attributes = value or {}
    if not isinstance(attributes, dict) or not all(isinstance(v, str) for v in attributes.values()):
        return None, "attributes must be an object of strings"
    if len(attributes) > MAX_ATTRIBUTES:
        return None, f"attributes take at most {MAX_ATTRIBUTES} keys"
    cleaned = {str(k): v for k, v in attributes.items()}
    if any(not k or len(k) > MAX_ATTRIBUTE_CHARS or len(v) > MAX_ATTRIBUTE_CHARS for k, v in cleaned.items()):
        return None, f"attribute keys and values take 1-{MAX_ATTRIBUTE_CHARS} characters"
    return cleaned, None


def _clean(raw: Any, known_lists: set[str]) -> tuple[dict[str, Any] | None, str | None]:
    """A validated row, or the reason it is rejected."""
    if not isinstance(raw, dict):
        return None, "row is not an object"
    if has_nul(raw):
        return None, "strings must not contain NUL characters or unpaired surrogates"
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        return None, f"name is required (1-{MAX_NAME} characters)"
    phone_raw = raw.get("phone")
    if not isinstance(phone_raw, str) or not phone_raw.strip():
        return None, "phone is required"
    phone = normalize_phone(phone_raw)
    if phone is None:
        return (
            None,
            f"phone {_quoted(phone_raw)} is not a valid international number (E.164, e.g. +14155550100)",
        )
    email = raw.get("email") or None
    if email is not None and (not isinstance(email, str) or not is_email(email)):
        return None, f"email {_quoted(email)} is not a valid address"
    attributes, reason = _attributes(raw.get("attributes"))
    if attributes is None:
        return None, reason
    lists = raw.get("lists") or []
    if not isinstance(lists, list) or not all(isinstance(x, str) for x in lists):
        return None, "lists must be an array of list ids"
    unknown = [x for x in lists if x not in known_lists]
    if unknown:
        return None, f"unknown contact list {_quoted(unknown[0])}"
    telegram, reason = _address_id(raw.get("telegram_chat_id"), "telegram_chat_id")
    if reason:
        return None, reason
    slack, reason = _address_id(raw.get("slack_user_id"), "slack_user_id")
    if reason:
        return None, reason
    zone = raw.get("timezone") or None
    if zone is not None and (not isinstance(zone, str) or not is_zone(zone)):
        return None, f"timezone {_quoted(zone)} is not an IANA time zone name (e.g. Europe/Paris)"
    return {
        "name": name.strip(),
        "phone": phone,
        "email": email,
        "telegram_chat_id": telegram,
        "slack_user_id": slack,
        "timezone": zone,
        "attributes": attributes,
        "lists": list(dict.fromkeys(lists)),
    }, None


def _echoed_phone(raw: Any) -> str | None:
    """The phone of a rejected row as echoed back: a string, cut to 64 characters."""
    phone = raw.get("phone") if isinstance(raw, dict) else None
    return phone[:ECHO] if isinstance(phone, str) else None


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def import_contacts(
    session: Session, *, account_id: str, rows: Sequence[Any], list_id: str | None = None, first_row: int = 1
) -> ImportResult:
    """Upsert contacts by phone; add them to `list_id` and to each row's `lists`."""
    if len(rows) > MAX_ROWS:
        raise ValidationFailed(
            f"an import takes at most {MAX_ROWS} rows; got {len(rows)}", {"max_rows": MAX_ROWS}
        )
    if list_id is not None:
        get_list(session, account_id=account_id, list_id=list_id)
    known_lists = set(
        session.execute(
            select(col(ContactList.id)).where(col(ContactList.account_id) == account_id)
        ).scalars()
    )
    result = ImportResult()
    clean: dict[str, dict[str, Any]] = {}
    for number, raw in enumerate(rows, start=first_row):
        row, reason = _clean(raw, known_lists)
        if row is None:
            result.rejected_rows.append({"row": number, "reason": reason, "phone": _echoed_phone(raw)})
        elif row["phone"] in clean:
            result.rejected_rows.append(
                {"row": number, "reason": "duplicate phone in this import", "phone": row["phone"]}
            )
        else:
            clean[row["phone"]] = row
    for batch in _batches(list(clean.values()), BATCH):
        _upsert(session, account_id, batch, list_id, result)
    return result


def _upsert(
    session: Session,
    account_id: str,
    batch: Sequence[dict[str, Any]],
    list_id: str | None,
    result: ImportResult,
) -> None:
    now = utcnow()
    existing = dict(
        session.execute(
            select(col(Contact.phone), col(Contact.id)).where(
                col(Contact.account_id) == account_id, col(Contact.phone).in_([r["phone"] for r in batch])
            )
        ).all()
    )
    inserts, updates = [], []
    for row in batch:
        contact_id = existing.get(row["phone"])
        if contact_id is None:
            contact_id = row["id"] = new_id("cnt")
            inserts.append(
                {
                    "id": contact_id,
                    "account_id": account_id,
                    "name": row["name"],
                    "phone": row["phone"],
                    "email": row["email"],
                    "telegram_chat_id": row["telegram_chat_id"],
                    "slack_user_id": row["slack_user_id"],
                    "timezone": row["timezone"],
                    "attributes": row["attributes"],
                    "created_at": now,
                    "updated_at": now,
                }
            )
        else:
            row["id"] = contact_id
            updates.append(
                {
                    "b_id": contact_id,
                    "b_name": row["name"],
                    "b_email": row["email"],
                    "b_tg": row["telegram_chat_id"],
                    "b_slack": row["slack_user_id"],
                    "b_tz": row["timezone"],
                    "b_attrs": row["attributes"],
                }
            )
    table = Contact.__table__  # type: ignore[attr-defined]
    if inserts:
        session.execute(insert(table), inserts)
    if updates:
        session.connection().execute(
            update(table)
            .where(table.c.id == bindparam("b_id"))
            .values(
                name=bindparam("b_name"),
                email=bindparam("b_email"),
                telegram_chat_id=bindparam("b_tg"),
                slack_user_id=bindparam("b_slack"),
                timezone=bindparam("b_tz"),
                attributes=bindparam("b_attrs"),
                updated_at=now,
            ),
            updates,
        )
    result.created += len(inserts)
    result.updated += len(updates)
    created = {row["id"] for row in inserts}
    _add_memberships(session, [(lst, r["id"]) for r in batch for lst in _lists_of(r, list_id)], created, now)


def _lists_of(row: dict[str, Any], list_id: str | None) -> Iterable[str]:
    return dict.fromkeys([*([list_id] if list_id else []), *row["lists"]])


def _add_memberships(session: Session, pairs: list[tuple[str, str]], created: set[str], now: Any) -> None:
    if not pairs:
        return
    # Only contacts that existed before this import can already be members.
    contact_ids = list({cid for _l, cid in pairs if cid not in created})
    have: set[tuple[str, str]] = set()
    if contact_ids:
        have = set(
            session.execute(
                select(col(ListMembership.list_id), col(ListMembership.contact_id)).where(
                    col(ListMembership.contact_id).in_(contact_ids)
                )
            ).tuples()
        )
    new = [
        {"list_id": lst, "contact_id": cid, "created_at": now}
        for lst, cid in dict.fromkeys(pairs)
        if (lst, cid) not in have
    ]
    if new:
        session.execute(insert(ListMembership.__table__), new)  # type: ignore[attr-defined]
