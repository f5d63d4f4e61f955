"""Provider webhooks: signatures, monotonic and idempotent status updates, inbound STOP."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import Engine, select, update

from api.app import create_app
from core import audience
from core.db import session_scope
from core.settings import Settings
from models import Contact, Message
from tests.api.test_campaigns import assert_error
from tests.conftest import RecordingLauncher
from tests.core.test_sender import _started_campaign
from tests.factories import make_tenant
from tests.providers.fake_server import hub_signature, twilio_signature

TOKEN = "twilio-secret"
APP_SECRET = "meta-secret"
PUBLIC = "https://campaigns.example.com"


@pytest.fixture
def hooks(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    configured = settings.model_copy(
        update={
            "public_url": PUBLIC,
            "twilio": settings.twilio.model_copy(
                update={"auth_token": SecretStr(TOKEN), "account_sid": "AC1"}
            ),
            "whatsapp_cloud": settings.whatsapp_cloud.model_copy(
                update={"app_secret": SecretStr(APP_SECRET), "verify_token": SecretStr("verify-me")}
            ),
        }
    )
    with TestClient(create_app(configured, launcher=RecordingLauncher(), engine=engine)) as client:
        yield client


def _sent_message(engine: Engine, pid: str) -> str:
    cid = _started_campaign(engine, n=1)
    with session_scope(engine) as session:
        session.execute(
            update(Message).where(Message.campaign_id == cid).values(status="sent", provider_message_id=pid)
        )
    return cid


def _message(engine: Engine, pid: str) -> Message:
    with session_scope(engine) as session:
        return session.execute(select(Message).where(Message.provider_message_id == pid)).scalar_one()


def post_twilio(client: TestClient, path: str, params: dict[str, str], token: str = TOKEN):  # type: ignore[no-untyped-def]
    signature = twilio_signature(PUBLIC + path, params, token)
    return client.post(path, data=params, headers={"X-Twilio-Signature": signature})


def test_twilio_status_callbacks(hooks: TestClient, engine: Engine) -> None:
    _sent_message(engine, "SM1")
    path = "/v1/webhooks/twilio/status"
    r = post_twilio(hooks, path, {"MessageSid": "SM1", "MessageStatus": "undelivered", "ErrorCode": "30003"})
    assert r.status_code == 204
    m = _message(engine, "SM1")
    assert (m.status, m.error_code) == ("undelivered", "30003")
    # A late "sent" and a redelivered callback change nothing.
    post_twilio(hooks, path, {"MessageSid": "SM1", "MessageStatus": "sent"})
    post_twilio(hooks, path, {"MessageSid": "SM1", "MessageStatus": "undelivered", "ErrorCode": "30003"})
    assert _message(engine, "SM1").status == "undelivered"


def test_bad_signatures_are_403_and_change_nothing(hooks: TestClient, engine: Engine) -> None:
    _sent_message(engine, "SM2")
    r = post_twilio(
        hooks,
        "/v1/webhooks/twilio/status",
        {"MessageSid": "SM2", "MessageStatus": "delivered"},
        token="wrong",
    )
    assert_error(r, 403, "forbidden")
    assert_error(hooks.post("/v1/webhooks/twilio/status", data={"MessageSid": "SM2"}), 403, "forbidden")
    raw = json.dumps({"entry": []}).encode()
    assert_error(
        hooks.post(
            "/v1/webhooks/whatsapp", content=raw, headers={"X-Hub-Signature-256": hub_signature(raw, "nope")}
        ),
        403,
        "forbidden",
    )
    assert _message(engine, "SM2").status == "sent"


def test_whatsapp_handshake(hooks: TestClient) -> None:
    ok = hooks.get(
        "/v1/webhooks/whatsapp",
        params={"hub.mode": "subscribe", "hub.verify_token": "verify-me", "hub.challenge": "1158201444"},
    )
    assert ok.status_code == 200 and ok.text == "1158201444"
    bad = hooks.get(
        "/v1/webhooks/whatsapp",
        params={"hub.mode": "subscribe", "hub.verify_token": "x", "hub.challenge": "1"},
    )
    assert_error(bad, 403, "forbidden")


def _wa_payload(*statuses: dict[str, object]) -> bytes:
    return json.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [{"id": "W", "changes": [{"field": "messages", "value": {"statuses": list(statuses)}}]}],
        }
    ).encode()


def test_whatsapp_statuses(hooks: TestClient, engine: Engine) -> None:
    _sent_message(engine, "wamid.A")
    _sent_message(engine, "wamid.B")
    raw = _wa_payload(
        {"id": "wamid.A", "status": "read"},
        {"id": "wamid.B", "status": "failed", "errors": [{"code": 131026, "title": "undeliverable"}]},
    )
    r = hooks.post(
        "/v1/webhooks/whatsapp", content=raw, headers={"X-Hub-Signature-256": hub_signature(raw, APP_SECRET)}
    )
    assert r.status_code == 200 and r.json() == {"received": 2, "applied": 2}
    assert _message(engine, "wamid.A").status == "delivered"
    b = _message(engine, "wamid.B")
    assert (b.status, b.error_code) == ("undelivered", "131026")
    again = _wa_payload({"id": "wamid.A", "status": "delivered"}, {"id": "wamid.A", "status": "sent"})
    r = hooks.post(
        "/v1/webhooks/whatsapp",
        content=again,
        headers={"X-Hub-Signature-256": hub_signature(again, APP_SECRET)},
    )
    assert r.json()["applied"] == 0


def test_a_webhook_that_beats_the_send_record_is_replayed(hooks: TestClient, engine: Engine) -> None:
    from core import tracking

    raw = _wa_payload({"id": "wamid.EARLY", "status": "delivered"})
    r = hooks.post(
        "/v1/webhooks/whatsapp", content=raw, headers={"X-Hub-Signature-256": hub_signature(raw, APP_SECRET)}
    )
    assert r.json() == {"received": 1, "applied": 0}
    cid = _sent_message(engine, "wamid.EARLY")
    with session_scope(engine) as session:
        assert tracking.replay_events(session, campaign_id=cid) == 1
    assert _message(engine, "wamid.EARLY").status == "delivered"


def test_inbound_stop_opts_the_phone_out(hooks: TestClient, engine: Engine) -> None:
    mine = make_tenant(engine, contacts_n=2, sender="+14155559000", name="mine")
    other = make_tenant(engine, contacts_n=2, sender="OTHER", name="other")
    phone = "+14155550000"
    r = post_twilio(
        hooks, "/v1/webhooks/twilio/inbound", {"From": phone, "To": "+14155559000", "Body": " stop "}
    )
    assert r.status_code == 200 and "<Response>" in r.text

    def subscribed(account_id: str) -> bool:
        with session_scope(engine) as session:
            c = session.execute(
                select(Contact).where(Contact.account_id == account_id, Contact.phone == phone)
            ).scalar_one()
            return c.unsubscribed_at is None

    assert not subscribed(mine.account_id) and subscribed(other.account_id)
    post_twilio(hooks, "/v1/webhooks/twilio/inbound", {"From": phone, "To": "+14155559000", "Body": "START"})
    assert subscribed(mine.account_id)
    # A `To` that no account owns opts the phone out everywhere.
    post_twilio(hooks, "/v1/webhooks/twilio/inbound", {"From": phone, "To": "+19999999999", "Body": "QUIT"})
    assert not subscribed(mine.account_id) and not subscribed(other.account_id)
    # An opted-out contact is no longer a recipient.
    with session_scope(engine) as session:
        assert (
            audience.estimate(
                session, account_id=mine.account_id, list_id=mine.list_id, channel="sms", body="hi"
            ).recipients
            == 1
        )
