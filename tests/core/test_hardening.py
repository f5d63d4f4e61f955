"""Regression tests for input hardening (issue 9): segments at part boundaries, anchored
validators, opt-out scope, stored string lengths on SQLite and PostgreSQL, empty audiences,
the open-campaign cap and the reconciler's paging."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine, select, update

from core import campaigns, contacts, importer, optout, sender_ids
from core.db import session_scope
from core.errors import RateLimited, ValidationFailed
from core.render import check_placeholders, sms_segments
from core.settings import Settings
from core.timeutil import utcnow
from core.validation import check_sender_value, is_e164, is_email
from models import Campaign, ChannelOptOut, Contact
from models.schemas import CampaignCreate, ContactCreate, ContactUpdate
from tests.conftest import RecordingLauncher
from tests.factories import make_tenant

# -- SMS segments: an escape pair or a surrogate pair is never split across parts --


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        ("a" * 160, 1),  # exact GSM-7 single-segment limit
        ("a" * 159 + "€", 2),  # 161 septets
        ("a" * 158 + "€", 1),  # 160 septets
        ("a" * 152 + "€" + "a" * 152, 3),  # the pair cannot straddle part 1 and part 2
        ("a" * 151 + "€" + "a" * 153, 2),  # the pair ends part 1: 153 | 153 septets
        ("a" * 151 + "€" + "a" * 154, 3),  # 153 | 153 | 1
        ("a" * 152 + "[" + "a" * 151, 2),  # 152 | 153: the pair opens part 2
        ("ж" * 70, 1),  # exact UCS-2 single-segment limit
        ("ж" * 68 + "😀", 1),  # 70 units: an emoji counts as two
        ("ж" * 69 + "😀", 2),  # 71 units
        ("ж" * 66 + "😀" + "ж" * 66, 3),  # the surrogate pair cannot straddle unit 67
        ("ж" * 65 + "😀" + "ж" * 67, 2),  # 67 | 67
    ],
)
def test_segments_never_split_a_character(text: str, segments: int) -> None:
    assert sms_segments(text) == segments


# -- validators are anchored at the very end (no trailing newline) --


def test_validators_refuse_a_trailing_newline() -> None:
    assert is_e164("+14155550100") and not is_e164("+14155550100\n")
    assert is_email("ada@example.com") and not is_email("ada@example.com\n")
    for channel, value in [
        ("sms", "MYBRAND\n"),
        ("sms", "+14155550100\n"),
        ("whatsapp", "123456\n"),
        ("telegram", "shop_bot\n"),
    ]:
        with pytest.raises(ValidationFailed):
            check_sender_value(channel, value)
    with pytest.raises(ValidationFailed):
        check_placeholders("{{attributes.code\n\n}}x{{attributes.\n}}")


def test_a_phone_with_a_trailing_newline_is_not_a_second_contact(engine: Engine) -> None:
    tenant = make_tenant(engine, contacts_n=1)  # +14155550000
    with session_scope(engine) as session, pytest.raises(ValidationFailed):
        contacts.create_contact(
            session, account_id=tenant.account_id, data=ContactCreate(name="Again", phone="+14155550000\n")
        )


# -- inbound STOP / START --


def _subscribed(engine: Engine, account_id: str, phone: str) -> bool:
    with session_scope(engine) as session:
        contact = session.execute(
            select(Contact).where(Contact.account_id == account_id, Contact.phone == phone)
        ).scalar_one()
        return contact.unsubscribed_at is None


def _inbound(engine: Engine, body: str, to: str = "+14155559000", phone: str = "+14155550000") -> int:
    with session_scope(engine) as session:
        return optout.handle_inbound_sms(session, from_phone=phone, to=to, body=body)


def test_an_unapproved_sender_id_does_not_own_the_number(engine: Engine) -> None:
    mine = make_tenant(engine, contacts_n=1, sender="+14155559000", name="mine")
    other = make_tenant(engine, contacts_n=1, sender="OTHER", name="other")
    with session_scope(engine) as session:
        sender_ids.register(session, account_id=other.account_id, channel="sms", value="+14155559000")
    _inbound(engine, "STOP")
    assert not _subscribed(engine, mine.account_id, "+14155550000")
    assert _subscribed(engine, other.account_id, "+14155550000")


def test_a_number_only_unapproved_senders_claim_is_owned_by_nobody(engine: Engine) -> None:
    first = make_tenant(engine, contacts_n=1, sender="FIRST", name="first")
    second = make_tenant(engine, contacts_n=1, sender="SECOND", name="second")
    with session_scope(engine) as session:
        sender_ids.register(session, account_id=first.account_id, channel="sms", value="+14155559000")
    _inbound(engine, "STOP")  # nobody owns +14155559000: every account
    assert not _subscribed(engine, first.account_id, "+14155550000")
    assert not _subscribed(engine, second.account_id, "+14155550000")


def test_start_undoes_only_an_inbound_stop(engine: Engine) -> None:
    tenant = make_tenant(engine, contacts_n=3, sender="+14155559000")
    with session_scope(engine) as session:
        ids = {
            c.phone: c.id
            for c in session.execute(select(Contact).where(Contact.account_id == tenant.account_id)).scalars()
        }
        # +14155550001 was opted out by the operator, +14155550002 left email only.
        contacts.update_contact(
            session,
            account_id=tenant.account_id,
            contact_id=ids["+14155550001"],
            data=ContactUpdate(subscribed=False),
        )
        session.add(ChannelOptOut(contact_id=ids["+14155550002"], channel="email", created_at=utcnow()))
    for phone in ids:
        _inbound(engine, "STOP", phone=phone)
    for phone in ids:
        assert not _subscribed(engine, tenant.account_id, phone)
    for phone in ids:
        _inbound(engine, "unstop", phone=phone)
    assert _subscribed(engine, tenant.account_id, "+14155550000")
    assert not _subscribed(engine, tenant.account_id, "+14155550001")  # the operator's opt-out stays
    assert _subscribed(engine, tenant.account_id, "+14155550002")
    with session_scope(engine) as session:
        left = session.execute(select(ChannelOptOut.contact_id, ChannelOptOut.channel)).all()
    assert [tuple(row) for row in left] == [(ids["+14155550002"], "email")]  # email stays left


def test_an_operator_opt_out_after_a_stop_is_not_undone_by_start(engine: Engine) -> None:
    tenant = make_tenant(engine, contacts_n=1, sender="+14155559000")
    _inbound(engine, "STOP")
    with session_scope(engine) as session:
        cid = session.execute(select(Contact.id).where(Contact.account_id == tenant.account_id)).scalar_one()
        contacts.update_contact(
            session, account_id=tenant.account_id, contact_id=cid, data=ContactUpdate(subscribed=False)
        )
    _inbound(engine, "START")
    assert not _subscribed(engine, tenant.account_id, "+14155550000")


def test_start_after_start_and_stop_after_stop_change_nothing(engine: Engine) -> None:
    tenant = make_tenant(engine, contacts_n=1, sender="+14155559000")
    assert _inbound(engine, "START") == 0
    assert _inbound(engine, "STOP") == 1 and _inbound(engine, "STOP") == 0
    assert _inbound(engine, "YES") == 1 and _inbound(engine, "YES") == 0
    assert _subscribed(engine, tenant.account_id, "+14155550000")


# -- stored strings never exceed their columns (SQLite and PostgreSQL) --


def _create(engine: Engine, tenant_sender: str, channel: str, **fields: object) -> Campaign:
    tenant = make_tenant(engine, channel=channel, sender=tenant_sender, name=f"t-{channel}")
    with session_scope(engine) as session:
        return campaigns.create_campaign(
            session,
            account_id=tenant.account_id,
            data=CampaignCreate.model_validate(
                {
                    "name": "long sender",
                    "channel": channel,
                    "contact_list_id": tenant.list_id,
                    "sender_id": tenant_sender,
                    "body": "hello",
                    **fields,
                }
            ),
        )


def test_a_sender_value_over_40_characters_creates_a_campaign(db: Engine) -> None:
    value = "newsletter." + "x" * 40 + "@example.com"
    campaign = _create(db, value, "email")
    assert campaign.sender_id == value and campaign.sender_value == value  # echoed as given
    # An edit reads the stored sender back: still found.
    with session_scope(db) as session:
        from models.schemas import CampaignUpdate

        _, prepared = campaigns.prepare_edit(
            session,
            account_id=campaign.account_id,
            campaign_id=campaign.id,
            data=CampaignUpdate(body="edited"),
        )
        assert prepared.sender_value == value


def test_an_import_rejects_bad_address_fields_row_by_row(db: Engine) -> None:
    tenant = make_tenant(db, contacts_n=0, name="importer", phone_base=14160000000)
    rows = [
        {"name": "Good", "phone": "+14160000001", "telegram_chat_id": "12345", "slack_user_id": "U1"},
        {"name": "Dict Slack", "phone": "+14160000002", "slack_user_id": {"x": 1}},
        {"name": "Long Slack", "phone": "+14160000003", "slack_user_id": "U" * 65},
        {"name": "Long Telegram", "phone": "+14160000004", "telegram_chat_id": "9" * 65},
        {"name": "List Telegram", "phone": "+14160000005", "telegram_chat_id": [1]},
        {"name": "Bool Telegram", "phone": "+14160000006", "telegram_chat_id": True},
        {"name": "Long Value", "phone": "+14160000007", "attributes": {"k": "v" * 1001}},
        {"name": "Long Key", "phone": "+14160000008", "attributes": {"k" * 1001: "v"}},
        {"name": "Many", "phone": "+14160000009", "attributes": {f"k{i}": "v" for i in range(101)}},
        {"name": "Long Email", "phone": "+14160000010", "email": "a" * 100_000 + "@example.com"},
        {"name": "Long Phone", "phone": "+1" + "4" * 100_000},
        {"name": "Int Telegram", "phone": "+14160000011", "telegram_chat_id": -1001234567890},
    ]
    with session_scope(db) as session:
        result = importer.import_contacts(session, account_id=tenant.account_id, rows=rows)
    assert (result.created, result.rejected) == (2, 10), result.rejected_rows
    assert [r["row"] for r in result.rejected_rows] == list(range(2, 12))
    for rejected in result.rejected_rows:
        assert rejected["reason"] and len(rejected["reason"]) <= 300
        assert rejected["phone"] is None or len(rejected["phone"]) <= 64
    with session_scope(db) as session:
        stored = {
            c.phone: c
            for c in session.execute(select(Contact).where(Contact.account_id == tenant.account_id)).scalars()
        }
    assert stored["+14160000011"].telegram_chat_id == "-1001234567890"
    assert (stored["+14160000001"].telegram_chat_id, stored["+14160000001"].slack_user_id) == ("12345", "U1")


def test_contact_fields_over_their_columns_are_refused(db: Engine) -> None:
    tenant = make_tenant(db, contacts_n=0, name="contacts", phone_base=14170000000)
    with pytest.raises(ValueError):
        ContactCreate(name="A", phone="+14170000001", telegram_chat_id="9" * 65)
    with pytest.raises(ValueError):
        ContactCreate(name="A", phone="+14170000001", telegram_chat_id=10**70)
    with pytest.raises(ValueError):
        ContactUpdate(slack_user_id="U" * 65)
    with session_scope(db) as session:
        created = contacts.create_contact(
            session,
            account_id=tenant.account_id,
            data=ContactCreate(
                name="A", phone="+14170000001", telegram_chat_id="9" * 64, slack_user_id="U" * 64
            ),
        )
        assert created.telegram_chat_id == "9" * 64


# -- an empty audience is refused; the open-campaign cap --


def _body(tenant_list: str, sender: str) -> CampaignCreate:
    return CampaignCreate(name="x", channel="sms", contact_list_id=tenant_list, sender_id=sender, body="hi")


def test_an_empty_audience_is_a_validation_error(engine: Engine) -> None:
    tenant = make_tenant(engine, contacts_n=1)
    with session_scope(engine) as session:
        session.execute(update(Contact).values(unsubscribed_at=utcnow()))
    with session_scope(engine) as session, pytest.raises(ValidationFailed) as info:
        campaigns.prepare_campaign(
            session, account_id=tenant.account_id, data=_body(tenant.list_id, tenant.sender)
        )
    assert "no active contact" in info.value.message


def test_the_open_campaign_cap_is_per_account(engine: Engine) -> None:
    tenant = make_tenant(engine, contacts_n=1)
    other = make_tenant(engine, contacts_n=1, name="other", phone_base=14180000000)
    with session_scope(engine) as session:
        for _ in range(2):
            campaigns.create_campaign(
                session, account_id=tenant.account_id, data=_body(tenant.list_id, tenant.sender), max_open=2
            )
    with session_scope(engine) as session, pytest.raises(RateLimited) as info:
        campaigns.create_campaign(
            session, account_id=tenant.account_id, data=_body(tenant.list_id, tenant.sender), max_open=2
        )
    assert info.value.retry_after == 60 and "2 open campaigns" in info.value.message
    with session_scope(engine) as session:  # another account is not affected
        campaigns.create_campaign(
            session, account_id=other.account_id, data=_body(other.list_id, other.sender), max_open=2
        )
        # A final campaign no longer counts.
        session.execute(
            update(Campaign).where(Campaign.account_id == tenant.account_id).values(status="completed")
        )
        campaigns.create_campaign(
            session, account_id=tenant.account_id, data=_body(tenant.list_id, tenant.sender), max_open=2
        )


# -- the reconciler pages through every open campaign --


async def test_the_reconciler_pages_through_every_open_campaign(
    settings: Settings, engine: Engine, launcher: RecordingLauncher
) -> None:
    from deployments import reconciler

    busy = make_tenant(engine, contacts_n=1, name="busy")
    quiet = make_tenant(engine, contacts_n=1, name="quiet", phone_base=14190000000)
    long_ago = utcnow() - timedelta(hours=1)
    with session_scope(engine) as session:
        for _ in range(5):  # far-future campaigns with a live run: nothing to do
            c = campaigns.create_campaign(
                session,
                account_id=busy.account_id,
                data=_body(busy.list_id, busy.sender).model_copy(
                    update={"scheduled_at": utcnow() + timedelta(days=30)}
                ),
            )
            c.flow_run_id = "not-a-prefect-run"
        waiting = [
            campaigns.create_campaign(
                session, account_id=quiet.account_id, data=_body(quiet.list_id, quiet.sender)
            ).id
            for _ in range(3)
        ]
        session.flush()
        # Every campaign was created at the same moment: the order must still be total.
        session.execute(update(Campaign).values(created_at=long_ago))
    seen: list[str] = []
    with session_scope(engine) as session:
        after = None
        while page := reconciler.watched_page(session, after=after, limit=2):
            seen.extend(c.id for c in page)
            after = (page[-1].created_at, page[-1].id)
    assert len(seen) == len(set(seen)) == 8
    report = await reconciler.reconcile_once(settings, launcher, page_size=2)
    assert sorted(report.launched) == sorted(waiting)


def test_nul_characters_are_refused_before_postgresql_sees_them(db: Engine) -> None:
    tenant = make_tenant(db, contacts_n=0, name="nul", phone_base=14199000000)
    for fields in ({"name": "a\x00b"}, {"attributes": {"k": "v\x00"}}, {"attributes": {"k\x00": "v"}}):
        with pytest.raises(ValueError):
            ContactCreate.model_validate({"name": "A", "phone": "+14199000001", **fields})
    with pytest.raises(ValueError):
        CampaignCreate.model_validate(
            {"name": "x", "channel": "sms", "contact_list_id": "lst_1", "sender_id": "A", "body": "\x00"}
        )
    rows = [
        {"name": "Good", "phone": "+14199000002"},
        {"name": "Nul\x00", "phone": "+14199000003"},
        {"name": "Nul attribute", "phone": "+14199000004", "attributes": {"k": "\x00"}},
    ]
    with session_scope(db) as session:
        result = importer.import_contacts(session, account_id=tenant.account_id, rows=rows)
    assert (result.created, result.rejected) == (1, 2)
