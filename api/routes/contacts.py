"""Contact and contact-list routes."""

from __future__ import annotations

import csv
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from sqlmodel import Session

from api.deps import AccountId, Paging, in_db, page_body, read_json
from api.errors import AUTH_ERRORS, error_responses
from api.serialize import contact_out, list_out
from core import contacts, importer
from core.errors import InvalidRequest
from models.public import (
    ContactListPublic,
    ContactPublic,
    ImportResultPublic,
    ListContactsAdded,
    Page,
)
from models.schemas import ContactCreate, ContactListCreate, ContactUpdate, ListContactsAdd

_READ = error_responses(*AUTH_ERRORS, 404)
_WRITE = error_responses(*AUTH_ERRORS, 404, 409, 422)
_IMPORT_BODY = {
    "requestBody": {
        "required": True,
        "description": 'Up to 100,000 contacts: a JSON array (or {"contacts": [...]}) of contact '
        "objects, or CSV with a header row (name, phone, email, telegram_chat_id, slack_user_id, "
        "lists, attributes.KEY...). Upsert by phone; a bad row is rejected alone.",
        "content": {
            "application/json": {
                "schema": {"type": "array", "items": {"$ref": "#/components/schemas/ContactCreate"}}
            },
            "text/csv": {"schema": {"type": "string"}},
        },
    }
}

router = APIRouter(tags=["contacts"])


def _contact(session: Session, account_id: str, contact_id: str) -> dict[str, Any]:
    contact = contacts.get_contact(session, account_id=account_id, contact_id=contact_id)
    return contact_out(
        contact,
        contacts.contact_list_ids(session, [contact.id])[contact.id],
        contacts.opted_out_channels(session, [contact.id])[contact.id],
    )


@router.post("/v1/contacts", status_code=201, response_model=ContactPublic, responses=_WRITE)
async def create_contact(request: Request, account_id: AccountId, data: ContactCreate) -> dict[str, Any]:
    """Create one contact (optionally in lists)."""

    def _create(session: Session) -> dict[str, Any]:
        contact = contacts.create_contact(session, account_id=account_id, data=data)
        return _contact(session, account_id, contact.id)

    return await in_db(request, _create)


@router.post(
    "/v1/contacts/import",
    response_model=ImportResultPublic,
    responses=error_responses(*AUTH_ERRORS, 404),
    openapi_extra=_IMPORT_BODY,
)
async def import_contacts(
    request: Request, account_id: AccountId, list_id: Annotated[str | None, Query()] = None
) -> dict[str, Any]:
    """Bulk upsert by phone from a JSON array or a CSV body (text/csv), up to 100,000 rows."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("text/csv", "application/csv"):
        raw = await request.body()
        try:
            rows: Any = importer.rows_from_csv(raw.decode("utf-8-sig"))
        except (UnicodeDecodeError, csv.Error) as exc:
            raise InvalidRequest(f"unreadable CSV: {exc}") from None
    else:
        rows = await read_json(request)
        if isinstance(rows, dict) and isinstance(rows.get("contacts"), list):
            rows = rows["contacts"]
        if not isinstance(rows, list):
            raise InvalidRequest("body must be a JSON array of contacts (or CSV with Content-Type: text/csv)")
    result = await in_db(
        request, lambda s: importer.import_contacts(s, account_id=account_id, rows=rows, list_id=list_id)
    )
    return result.as_dict()


@router.get("/v1/contacts", response_model=Page[ContactPublic], responses=_READ)
async def list_contacts(
    request: Request, account_id: AccountId, paging: Paging, list_id: Annotated[str | None, Query()] = None
) -> dict[str, Any]:
    """A page of contacts, newest first; `list_id` filters to one list."""

    def _list(session: Session) -> dict[str, Any]:
        rows, total = contacts.list_contacts(
            session, account_id=account_id, list_id=list_id, page=paging.page, per_page=paging.per_page
        )
        ids = [c.id for c in rows]
        lists, left = contacts.contact_list_ids(session, ids), contacts.opted_out_channels(session, ids)
        return page_body([contact_out(c, lists[c.id], left[c.id]) for c in rows], paging, total)

    return await in_db(request, _list, write=False)


@router.get("/v1/contacts/{contact_id}", response_model=ContactPublic, responses=_READ)
async def get_contact(request: Request, account_id: AccountId, contact_id: str) -> dict[str, Any]:
    """One contact."""
    return await in_db(request, lambda s: _contact(s, account_id, contact_id), write=False)


@router.patch("/v1/contacts/{contact_id}", response_model=ContactPublic, responses=_WRITE)
async def update_contact(
    request: Request, account_id: AccountId, contact_id: str, data: ContactUpdate
) -> dict[str, Any]:
    """Partial update; `subscribed: true/false` opts a contact back in or out."""

    def _update(session: Session) -> dict[str, Any]:
        contacts.update_contact(session, account_id=account_id, contact_id=contact_id, data=data)
        return _contact(session, account_id, contact_id)

    return await in_db(request, _update)


@router.delete("/v1/contacts/{contact_id}", status_code=204, responses=_READ)
async def delete_contact(request: Request, account_id: AccountId, contact_id: str) -> Response:
    """Delete a contact."""
    await in_db(request, lambda s: contacts.delete_contact(s, account_id=account_id, contact_id=contact_id))
    return Response(status_code=204)


@router.post(
    "/v1/contact-lists",
    status_code=201,
    response_model=ContactListPublic,
    responses=error_responses(*AUTH_ERRORS, 422),
)
async def create_list(request: Request, account_id: AccountId, data: ContactListCreate) -> dict[str, Any]:
    """Create an empty contact list."""
    lst = await in_db(request, lambda s: contacts.create_list(s, account_id=account_id, name=data.name))
    return list_out(lst, 0)


@router.get(
    "/v1/contact-lists", response_model=Page[ContactListPublic], responses=error_responses(*AUTH_ERRORS)
)
async def list_lists(request: Request, account_id: AccountId, paging: Paging) -> dict[str, Any]:
    """A page of contact lists, newest first."""

    def _list(session: Session) -> dict[str, Any]:
        rows, total = contacts.list_lists(
            session, account_id=account_id, page=paging.page, per_page=paging.per_page
        )
        counts = contacts.list_counts(session, [lst.id for lst in rows])
        return page_body([list_out(lst, counts[lst.id]) for lst in rows], paging, total)

    return await in_db(request, _list, write=False)


@router.get("/v1/contact-lists/{list_id}", response_model=ContactListPublic, responses=_READ)
async def get_list(request: Request, account_id: AccountId, list_id: str) -> dict[str, Any]:
    """One contact list with its size."""

    def _get(session: Session) -> dict[str, Any]:
        lst = contacts.get_list(session, account_id=account_id, list_id=list_id)
        return list_out(lst, contacts.list_counts(session, [lst.id])[lst.id])

    return await in_db(request, _get, write=False)


@router.delete("/v1/contact-lists/{list_id}", status_code=204, responses=_READ)
async def delete_list(request: Request, account_id: AccountId, list_id: str) -> Response:
    """Delete a list; its contacts remain."""
    await in_db(request, lambda s: contacts.delete_list(s, account_id=account_id, list_id=list_id))
    return Response(status_code=204)


@router.post("/v1/contact-lists/{list_id}/contacts", response_model=ListContactsAdded, responses=_WRITE)
async def add_list_contacts(
    request: Request, account_id: AccountId, list_id: str, data: ListContactsAdd
) -> dict[str, Any]:
    """Add contacts to a list (idempotent per contact)."""

    def _add(session: Session) -> dict[str, Any]:
        added = contacts.add_to_list(
            session, account_id=account_id, list_id=list_id, contact_ids=data.contact_ids
        )
        lst = contacts.get_list(session, account_id=account_id, list_id=list_id)
        return {**list_out(lst, contacts.list_counts(session, [list_id])[list_id]), "added": added}

    return await in_db(request, _add)


@router.delete("/v1/contact-lists/{list_id}/contacts/{contact_id}", status_code=204, responses=_READ)
async def remove_list_contact(
    request: Request, account_id: AccountId, list_id: str, contact_id: str
) -> Response:
    """Remove one contact from a list."""
    await in_db(
        request,
        lambda s: contacts.remove_from_list(s, account_id=account_id, list_id=list_id, contact_id=contact_id),
    )
    return Response(status_code=204)
