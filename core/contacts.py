"""Contacts and contact lists (many-to-many)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import delete, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from core.errors import Conflict, InvalidRequest, NotFound, ValidationFailed
from core.ids import new_id
from core.optout import STOP_CHANNEL
from core.timeutil import utcnow
from core.validation import is_e164, is_email
from core.zones import is_zone
from models import ChannelOptOut, Contact, ContactList, ListMembership
from models.schemas import ContactCreate, ContactUpdate


def _check_fields(phone: str | None, email: str | None, timezone: str | None = None) -> None:
    if phone is not None and not is_e164(phone):
        raise ValidationFailed("phone must be in E.164 format, e.g. +14155550100", {"field": "phone"})
    if email is not None and not is_email(email):
        raise ValidationFailed("email is not a valid address", {"field": "email"})
    if timezone is not None and not is_zone(timezone):
        raise ValidationFailed(
            f"timezone {timezone!r} is not an IANA time zone name (e.g. Europe/Paris)", {"field": "timezone"}
        )


def get_list(session: Session, *, account_id: str, list_id: str) -> ContactList:
    """A contact list of this account, or NotFound."""
    lst = session.get(ContactList, list_id)
    if lst is None or lst.account_id != account_id:
        raise NotFound(f"contact list {list_id} not found")
    return lst


def _check_lists(session: Session, account_id: str, list_ids: Sequence[str]) -> None:
    for list_id in dict.fromkeys(list_ids):
        get_list(session, account_id=account_id, list_id=list_id)


def _add_memberships(session: Session, list_id: str, contact_ids: Iterable[str]) -> int:
    wanted = list(dict.fromkeys(contact_ids))
    existing = set(
        session.exec(
            select(ListMembership.contact_id).where(
                ListMembership.list_id == list_id, col(ListMembership.contact_id).in_(wanted)
            )
        ).all()
    )
    now = utcnow()
    new = [cid for cid in wanted if cid not in existing]
    session.add_all(ListMembership(list_id=list_id, contact_id=cid, created_at=now) for cid in new)
    return len(new)


def create_contact(session: Session, *, account_id: str, data: ContactCreate) -> Contact:
    """Create a contact; duplicate phone → Conflict, bad phone/email/timezone → ValidationFailed."""
    _check_fields(data.phone, data.email, data.timezone)
    _check_lists(session, account_id, data.lists)
    now = utcnow()
    contact = Contact(
        id=new_id("cnt"),
        account_id=account_id,
        name=data.name,
        phone=data.phone,
        email=data.email,
        telegram_chat_id=None if data.telegram_chat_id is None else str(data.telegram_chat_id),
        slack_user_id=data.slack_user_id,
        timezone=data.timezone,
        attributes=dict(data.attributes),
        created_at=now,
        updated_at=now,
    )
    try:
        with session.begin_nested():
            session.add(contact)
            session.flush()
    except IntegrityError:
        raise Conflict(f"a contact with phone {data.phone} already exists", {"field": "phone"}) from None
    for list_id in dict.fromkeys(data.lists):
        _add_memberships(session, list_id, [contact.id])
    session.flush()
    return contact


def get_contact(session: Session, *, account_id: str, contact_id: str) -> Contact:
    """A contact of this account, or NotFound."""
    contact = session.get(Contact, contact_id)
    if contact is None or contact.account_id != account_id:
        raise NotFound(f"contact {contact_id} not found")
    return contact


def update_contact(session: Session, *, account_id: str, contact_id: str, data: ContactUpdate) -> Contact:
    """Apply a partial update; `lists` replaces the contact's memberships."""
    contact = get_contact(session, account_id=account_id, contact_id=contact_id)
    fields = data.model_dump(exclude_unset=True)
    for required in ("name", "phone"):
        if required in fields and fields[required] is None:
            raise InvalidRequest(f"{required}: must not be null", {"field": required})
    _check_fields(fields.get("phone"), fields.get("email"), fields.get("timezone"))
    if data.lists is not None:
        _check_lists(session, account_id, data.lists)
    for name in ("name", "phone", "email", "slack_user_id", "timezone"):
        if name in fields:
            setattr(contact, name, fields[name])
    if "telegram_chat_id" in fields:
        value = fields["telegram_chat_id"]
        contact.telegram_chat_id = None if value is None else str(value)
    if data.attributes is not None:
        contact.attributes = dict(data.attributes)
    if data.subscribed is True:
        contact.unsubscribed_at = None
        session.execute(delete(ChannelOptOut).where(col(ChannelOptOut.contact_id) == contact.id))
    elif data.subscribed is False:
        # The opt-out is the operator's now: an inbound START must not undo it.
        session.execute(
            delete(ChannelOptOut).where(
                col(ChannelOptOut.contact_id) == contact.id, col(ChannelOptOut.channel) == STOP_CHANNEL
            )
        )
        if contact.unsubscribed_at is None:
            contact.unsubscribed_at = utcnow()
    contact.updated_at = utcnow()
    try:
        with session.begin_nested():
            session.add(contact)
            session.flush()
    except IntegrityError:
        raise Conflict(f"a contact with phone {contact.phone} already exists") from None
    if data.lists is not None:
        session.execute(delete(ListMembership).where(col(ListMembership.contact_id) == contact.id))
        for list_id in dict.fromkeys(data.lists):
            _add_memberships(session, list_id, [contact.id])
    session.flush()
    return contact


def delete_contact(session: Session, *, account_id: str, contact_id: str) -> None:
    """Delete a contact and its memberships (messages already sent keep their rows)."""
    contact = get_contact(session, account_id=account_id, contact_id=contact_id)
    session.execute(delete(ListMembership).where(col(ListMembership.contact_id) == contact.id))
    session.execute(delete(ChannelOptOut).where(col(ChannelOptOut.contact_id) == contact.id))
    session.delete(contact)
    session.flush()


def contact_list_ids(session: Session, contact_ids: Sequence[str]) -> dict[str, list[str]]:
    """The list ids of each contact, in one query."""
    out: dict[str, list[str]] = {cid: [] for cid in contact_ids}
    if contact_ids:
        rows = session.exec(
            select(ListMembership.contact_id, ListMembership.list_id)
            .where(col(ListMembership.contact_id).in_(contact_ids))
            .order_by(col(ListMembership.created_at))
        ).all()
        for contact_id, list_id in rows:
            out[contact_id].append(list_id)
    return out


def opted_out_channels(session: Session, contact_ids: Sequence[str]) -> dict[str, list[str]]:
    """The channels each contact left one by one (email unsubscribe, a blocked bot), in one
    query; the marker a STOP leaves beside `unsubscribed_at` is not one of them."""
    out: dict[str, list[str]] = {cid: [] for cid in contact_ids}
    if contact_ids:
        rows = session.exec(
            select(ChannelOptOut.contact_id, ChannelOptOut.channel)
            .where(col(ChannelOptOut.contact_id).in_(contact_ids), ChannelOptOut.channel != STOP_CHANNEL)
            .order_by(col(ChannelOptOut.channel))
        ).all()
        for contact_id, channel in rows:
            out[contact_id].append(channel)
    return out


def list_contacts(
    session: Session, *, account_id: str, list_id: str | None, page: int, per_page: int
) -> tuple[list[Contact], int]:
    """A page of contacts, newest first, optionally only those in one list."""
    query = select(Contact).where(Contact.account_id == account_id)
    count = select(func.count()).select_from(Contact).where(Contact.account_id == account_id)
    if list_id is not None:
        get_list(session, account_id=account_id, list_id=list_id)
        member = select(ListMembership.contact_id).where(ListMembership.list_id == list_id)
        query = query.where(col(Contact.id).in_(member))
        count = count.where(col(Contact.id).in_(member))
    rows = session.exec(
        query.order_by(col(Contact.created_at).desc(), col(Contact.id).desc())
        .offset((page - 1) * per_page)
        .limit(per_page)
    ).all()
    return list(rows), int(session.exec(count).one())


def create_list(session: Session, *, account_id: str, name: str) -> ContactList:
    """Create an empty contact list."""
    lst = ContactList(id=new_id("lst"), account_id=account_id, name=name, created_at=utcnow())
    session.add(lst)
    session.flush()
    return lst


def list_counts(session: Session, list_ids: Sequence[str]) -> dict[str, int]:
    """Number of contacts in each list, in one query."""
    out = dict.fromkeys(list_ids, 0)
    if list_ids:
        rows = session.exec(
            select(ListMembership.list_id, func.count())
            .where(col(ListMembership.list_id).in_(list_ids))
            .group_by(col(ListMembership.list_id))
        ).all()
        out.update({lid: int(n) for lid, n in rows})
    return out


def list_lists(
    session: Session, *, account_id: str, page: int, per_page: int
) -> tuple[list[ContactList], int]:
    """A page of contact lists, newest first."""
    rows = session.exec(
        select(ContactList)
        .where(ContactList.account_id == account_id)
        .order_by(col(ContactList.created_at).desc(), col(ContactList.id).desc())
        .offset((page - 1) * per_page)
        .limit(per_page)
    ).all()
    total = session.exec(
        select(func.count()).select_from(ContactList).where(ContactList.account_id == account_id)
    ).one()
    return list(rows), int(total)


def delete_list(session: Session, *, account_id: str, list_id: str) -> None:
    """Delete a list (its contacts stay)."""
    lst = get_list(session, account_id=account_id, list_id=list_id)
    session.execute(delete(ListMembership).where(col(ListMembership.list_id) == lst.id))
    session.delete(lst)
    session.flush()


def add_to_list(session: Session, *, account_id: str, list_id: str, contact_ids: Sequence[str]) -> int:
    """Add contacts of this account to a list; unknown ids → NotFound, nothing added."""
    get_list(session, account_id=account_id, list_id=list_id)
    wanted = list(dict.fromkeys(contact_ids))
    found = set(
        session.exec(
            select(Contact.id).where(Contact.account_id == account_id, col(Contact.id).in_(wanted))
        ).all()
    )
    missing = [cid for cid in wanted if cid not in found]
    if missing:
        raise NotFound(f"contact {missing[0]} not found", {"missing_contact_ids": missing[:100]})
    added = _add_memberships(session, list_id, wanted)
    session.flush()
    return added


def remove_from_list(session: Session, *, account_id: str, list_id: str, contact_id: str) -> None:
    """Remove one contact from a list; a contact not in the list → NotFound."""
    get_list(session, account_id=account_id, list_id=list_id)
    result = session.execute(
        delete(ListMembership).where(
            col(ListMembership.list_id) == list_id, col(ListMembership.contact_id) == contact_id
        )
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise NotFound(f"contact {contact_id} is not in list {list_id}")
