"""POST /v1/webhooks/sendgrid: signed event batches move email messages to their final status
(never backwards) and opt bounced or complaining contacts out of email; anything unsigned,
stale or malformed changes nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import Engine, select, update

from api.app import create_app
from core import audience, campaigns, tracking
from core.db import session_scope
from core.email_events import read_events
from core.settings import Settings
from models import ChannelOptOut, Contact, Message, StatusEvent
from models.schemas import CampaignCreate
from tests.api.test_campaigns import assert_error
from tests.conftest import RecordingLauncher
from tests.factories import Tenant, make_tenant, start_campaign
from tests.providers.fake_server import FakeProviders, sendgrid_headers

SENDER = "news@example.com"
PATH = "/v1/webhooks/sendgrid"


@pytest.fixture
def hooks(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    from tests.providers.fake_server import SENDGRID_PUBLIC_KEY

    configured = settings.model_copy(
        update={"sendgrid": settings.sendgrid.model_copy(update={"webhook_public_key": SENDGRID_PUBLIC_KEY})}
    )
    with TestClient(create_app(configured, launcher=RecordingLauncher(), engine=engine)) as client:
        yield client


@pytest.fixture
def tenant(engine: Engine) -> Tenant:
    return make_tenant(engine, contacts_n=3, channel="email", sender=SENDER)


def _campaign(engine: Engine, tenant: Tenant, *, sent: bool = True) -> list[Message]:
    """An email campaign whose messages SendGrid accepted: provider ids X<campaign>-<seq>."""
    with session_scope(engine) as session:
        cid = campaigns.create_campaign(
            session,
            account_id=tenant.account_id,
            data=CampaignCreate(
                name="news", channel="email", contact_list_id=tenant.list_id, sender_id=SENDER, body="Hi"
            ),
        ).id
    start_campaign(engine, cid)
    with session_scope(engine) as session:
        rows = list(
            session.execute(select(Message).where(Message.campaign_id == cid).order_by(Message.seq)).scalars()
        )
        for row in rows:
            if sent:
                row.status, row.provider_message_id = "sent", f"X{cid[-6:]}{row.seq}"
            else:  # the request is out; the sender has not recorded SendGrid's answer yet
                row.status = "sending"
        session.flush()
        session.expunge_all()
    return rows


def _message(engine: Engine, message_id: str) -> Message:
    with session_scope(engine) as session:
        return session.execute(select(Message).where(Message.id == message_id)).scalar_one()


def _opted_out(engine: Engine) -> set[tuple[str, str]]:
    with session_scope(engine) as session:
        return {(o.contact_id, o.channel) for o in session.execute(select(ChannelOptOut)).scalars()}


def event(message: Message, kind: str, *, pid: str | None = None, **fields: Any) -> dict[str, Any]:
    """An event as SendGrid posts it, our custom args merged in."""
    xid = pid or message.provider_message_id
    return {
        "email": message.to_address,
        "timestamp": int(time.time()),
        "event": kind,
        "sg_event_id": f"evt-{kind}-{message.seq}",
        "sg_message_id": f"{xid}.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0",
        "smtp-id": f"<{xid}@ismtpd0039p1iad1.sendgrid.net>",
        "campaigns_message_id": message.id,
        "campaigns_campaign_id": message.campaign_id,
        **fields,
    }


def post(
    client: TestClient, events: Any, *, timestamp: int | None = None, raw: bytes | None = None
) -> Response:
    body = raw if raw is not None else (json.dumps(events, separators=(",", ":")) + "\r\n").encode()
    return client.post(PATH, content=body, headers=sendgrid_headers(body, timestamp))


def test_events_move_messages_to_their_final_status(
    hooks: TestClient, engine: Engine, tenant: Tenant
) -> None:
    ok, bounced, dropped = _campaign(engine, tenant)
    r = post(
        hooks,
        [
            event(ok, "processed"),
            event(ok, "delivered", response="250 OK"),
            event(bounced, "bounce", type="bounce", status="5.1.1", reason="550 5.1.1 unknown recipient"),
            event(dropped, "dropped", reason="Bounced Address"),
        ],
    )
    assert r.status_code == 200 and r.json() == {"received": 4, "applied": 3, "opted_out": 1}
    assert _message(engine, ok.id).status == "delivered"
    b = _message(engine, bounced.id)
    assert (b.status, b.error_code, b.error_message) == (
        "undelivered",
        "bounce",
        "550 5.1.1 unknown recipient",
    )
    d = _message(engine, dropped.id)
    assert (d.status, d.error_code, d.error_message) == ("undelivered", "dropped", "Bounced Address")


def test_statuses_never_move_backwards_and_redeliveries_change_nothing(
    hooks: TestClient, engine: Engine, tenant: Tenant
) -> None:
    ok, bounced, _ = _campaign(engine, tenant)
    batch = [event(ok, "delivered"), event(bounced, "bounce", reason="550 no such user")]
    assert post(hooks, batch).json()["applied"] == 2
    late = [
        event(ok, "deferred", response="451 try later"),
        event(ok, "bounce", reason="late async bounce"),  # after delivered: stays delivered
        event(bounced, "delivered"),
        event(bounced, "open"),
        event(bounced, "click", url="https://shop.example"),
    ]
    assert post(hooks, late).json()["applied"] == 0
    assert post(hooks, batch).json()["applied"] == 0
    assert _message(engine, ok.id).status == "delivered"
    b = _message(engine, bounced.id)
    assert (b.status, b.error_code, b.error_message) == ("undelivered", "bounce", "550 no such user")


def test_bounces_and_spam_reports_opt_the_contact_out_of_email(
    hooks: TestClient, engine: Engine, tenant: Tenant
) -> None:
    first, second, third = _campaign(engine, tenant)
    r = post(
        hooks,
        [
            event(first, "bounce", type="bounce", reason="550 unknown"),
            event(second, "delivered"),
            event(second, "spamreport"),
            event(third, "bounce", type="blocked", reason="421 reputation"),  # a soft bounce
        ],
    )
    assert r.json() == {"received": 4, "applied": 3, "opted_out": 2}
    assert _opted_out(engine) == {(first.contact_id, "email"), (second.contact_id, "email")}
    blocked = _message(engine, third.id)
    assert (blocked.status, blocked.error_code, blocked.error_message) == (
        "undelivered",
        "bounce",
        "blocked: 421 reputation",
    )
    assert post(hooks, [event(second, "spamreport")]).json()["opted_out"] == 0  # already out
    with session_scope(engine) as session:
        # Out of email only: still subscribed, still an SMS recipient, no longer an email one.
        assert all(c.unsubscribed_at is None for c in session.execute(select(Contact)).scalars())
        reach = {
            channel: audience.estimate(
                session, account_id=tenant.account_id, list_id=tenant.list_id, channel=channel, body="Hi"
            ).recipients
            for channel in ("email", "sms")
        }
    assert reach == {"email": 1, "sms": 3}


def test_the_custom_arg_finds_a_message_when_sg_message_id_is_missing(
    hooks: TestClient, engine: Engine, tenant: Tenant
) -> None:
    ok, *_ = _campaign(engine, tenant)
    bare = {k: v for k, v in event(ok, "delivered").items() if k not in ("sg_message_id", "smtp-id")}
    assert post(hooks, [bare]).json()["applied"] == 1
    assert _message(engine, ok.id).status == "delivered"


def test_events_that_beat_the_send_record_are_kept_and_replayed(
    hooks: TestClient, engine: Engine, tenant: Tenant
) -> None:
    early, bounced, _ = _campaign(engine, tenant, sent=False)
    r = post(
        hooks,
        [event(early, "delivered", pid="XEARLY"), event(bounced, "bounce", pid="XBOUNCE", reason="550")],
    )
    assert r.json() == {"received": 2, "applied": 0, "opted_out": 1}  # the opt-out needs no provider id
    assert _message(engine, early.id).status == "sending"
    with session_scope(engine) as session:
        for row, pid in ((early, "XEARLY"), (bounced, "XBOUNCE")):
            session.execute(
                update(Message).where(Message.id == row.id).values(status="sent", provider_message_id=pid)
            )
        assert tracking.replay_events(session, campaign_id=early.campaign_id) == 2
    assert _message(engine, early.id).status == "delivered"
    assert _message(engine, bounced.id).error_code == "bounce"


def test_events_for_unknown_messages_are_ignored(hooks: TestClient, engine: Engine, tenant: Tenant) -> None:
    ok, *_ = _campaign(engine, tenant)
    stranger = {**event(ok, "bounce", pid="NOTOURS"), "campaigns_message_id": "msg_unknown"}
    foreign = {
        k: v for k, v in event(ok, "spamreport", pid="OTHERAPP").items() if not k.startswith("campaigns_")
    }
    r = post(hooks, [stranger, foreign, "not an event", {"event": "delivered"}])
    assert r.status_code == 200 and r.json() == {"received": 4, "applied": 0, "opted_out": 0}
    assert _message(engine, ok.id).status == "sent"
    assert _opted_out(engine) == set()
    with session_scope(engine) as session:
        assert session.execute(select(StatusEvent)).first() is None  # nothing kept for replay either


def test_unsigned_badly_signed_or_unconfigured_is_403(
    hooks: TestClient, settings: Settings, engine: Engine, tenant: Tenant
) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    ok, *_ = _campaign(engine, tenant)
    raw = json.dumps([event(ok, "delivered")]).encode()
    assert_error(hooks.post(PATH, content=raw), 403, "forbidden")
    signed = sendgrid_headers(raw)
    assert_error(hooks.post(PATH, content=raw + b" ", headers=signed), 403, "forbidden")  # body changed
    assert_error(
        hooks.post(PATH, content=raw, headers={**signed, "X-Twilio-Email-Event-Webhook-Signature": "AAAA"}),
        403,
        "forbidden",
    )
    tampered_time = {**signed, "X-Twilio-Email-Event-Webhook-Timestamp": str(int(time.time()) + 1)}
    assert_error(hooks.post(PATH, content=raw, headers=tampered_time), 403, "forbidden")
    other_key = sendgrid_headers(raw, key=ec.generate_private_key(ec.SECP256R1()))
    assert_error(hooks.post(PATH, content=raw, headers=other_key), 403, "forbidden")
    with TestClient(create_app(settings, launcher=RecordingLauncher(), engine=engine)) as unconfigured:
        assert_error(unconfigured.post(PATH, content=raw, headers=signed), 403, "forbidden")
    assert _message(engine, ok.id).status == "sent"


def test_an_old_genuine_batch_is_accepted_by_default(
    hooks: TestClient, engine: Engine, tenant: Tenant
) -> None:
    """SendGrid retries failed POSTs for a day; a replayed genuine batch changes nothing."""
    ok, *_ = _campaign(engine, tenant)
    assert post(hooks, [event(ok, "delivered")], timestamp=int(time.time()) - 86_000).status_code == 200
    assert _message(engine, ok.id).status == "delivered"
    assert post(hooks, [event(ok, "delivered")], timestamp=1600112502).status_code == 200


def test_a_stale_or_future_timestamp_is_403_when_a_window_is_set(
    settings: Settings, engine: Engine, tenant: Tenant
) -> None:
    from tests.providers.fake_server import SENDGRID_PUBLIC_KEY

    strict = settings.model_copy(
        update={
            "sendgrid": settings.sendgrid.model_copy(
                update={"webhook_public_key": SENDGRID_PUBLIC_KEY, "webhook_max_skew_s": 600.0}
            )
        }
    )
    hooks = TestClient(create_app(strict, launcher=RecordingLauncher(), engine=engine))
    ok, *_ = _campaign(engine, tenant)
    for skew in (-601, 601):
        error = assert_error(
            post(hooks, [event(ok, "delivered")], timestamp=int(time.time()) + skew), 403, "forbidden"
        )
        assert "stale" in error["message"]
    assert post(hooks, [event(ok, "delivered")], timestamp=int(time.time()) - 300).status_code == 200


@pytest.mark.parametrize("raw", [b"[{", b"\xff\xfe", b'{"event": "delivered"}', b"[" * 100_000])
def test_a_signed_body_that_is_not_a_json_array_is_400(hooks: TestClient, raw: bytes) -> None:
    assert_error(post(hooks, None, raw=raw), 400, "invalid_request")


def test_events_from_the_fake_verify_end_to_end(hooks: TestClient, engine: Engine, tenant: Tenant) -> None:
    """The fake's own event shapes, through the app (the e2e test does it over the network)."""
    ok, bounced, spam = _campaign(engine, tenant)
    events = [
        FakeProviders.sendgrid_event(
            str(m.provider_message_id), kind, m.to_address, {"campaigns_message_id": m.id}
        )
        for m, kind in ((ok, "delivered"), (bounced, "bounce"), (spam, "delivered"), (spam, "spamreport"))
    ]
    assert post(hooks, events).json() == {"received": 4, "applied": 3, "opted_out": 2}


# -- the pure mapping --


def test_events_that_change_nothing_are_dropped_early() -> None:
    base = {"sg_message_id": "X1.filter", "campaigns_message_id": "msg_1"}
    kinds = ["processed", "deferred", "open", "click", "group_resubscribe", "unknown"]
    assert read_events([{**base, "event": kind} for kind in kinds]) == []
    assert read_events({"event": "delivered", **base}) == []  # not an array
    assert read_events([{"event": "delivered"}]) == []  # names no message
    assert (
        read_events([{"event": "delivered", "sg_message_id": "X" * 500}]) == []
    )  # no id of ours is that long
    (unsubscribe,) = read_events([{**base, "event": "unsubscribe"}])
    assert (unsubscribe.provider_message_id, unsubscribe.status, unsubscribe.opt_out) == ("X1", None, True)
    (bounce,) = read_events([{**base, "event": "bounce", "status": "5.1.1", "reason": "550 mailbox full"}])
    assert (bounce.status, bounce.error_code, bounce.error_message, bounce.opt_out) == (
        "undelivered",
        "bounce",
        "550 mailbox full (5.1.1)",
        True,
    )
