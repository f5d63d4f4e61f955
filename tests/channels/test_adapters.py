"""Adapter details with httpx.MockTransport: exact requests and error classification."""

from __future__ import annotations

import base64
import json
from email import message_from_bytes
from urllib.parse import parse_qs

import httpx
import pytest
from pydantic import SecretStr

from channels.base import (
    OutboundMessage,
    PermanentSendError,
    ProviderConfigError,
    TransientSendError,
    UnknownOutcomeError,
)
from channels.email_smtp import SmtpChannel
from channels.slack_web import SlackChannel
from channels.sms_twilio import TwilioChannel, signature
from channels.telegram_bot import TelegramChannel
from channels.whatsapp_cloud import WhatsAppCloudChannel, status_update
from core.settings import (
    SlackWebSettings,
    SmtpSettings,
    TelegramBotSettings,
    TwilioSettings,
    WhatsAppCloudSettings,
)
from tests.providers.fake_server import SmtpServer

MSG = OutboundMessage(message_id="msg_1", campaign_id="cmp_1", to="+14155550100", sender="SHOP", body="Hi ✓")


def mock(handler):  # type: ignore[no-untyped-def]
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    return httpx.MockTransport(record), seen


def twilio(transport: httpx.MockTransport, public_url: str | None = None) -> TwilioChannel:
    settings = TwilioSettings(
        account_sid="AC123", auth_token=SecretStr("tok"), base_url="https://api.twilio.test"
    )
    return TwilioChannel(settings, public_url=public_url, transport=transport)


async def test_twilio_request_and_status_lookup() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(201, json={"sid": "SM1", "status": "queued"})
        return httpx.Response(
            200,
            json={"sid": "SM1", "status": "undelivered", "error_code": 30003, "error_message": "Unreachable"},
        )

    transport, seen = mock(handler)
    chan = twilio(transport, public_url="https://hooks.example.com/")
    await chan.open()
    result = await chan.send(MSG)
    update = await chan.fetch_status("SM1", None)
    await chan.close()
    assert (result.provider_message_id, result.status) == ("SM1", "sent")
    post = seen[0]
    assert post.url.path == "/2010-04-01/Accounts/AC123/Messages.json"
    assert post.headers["authorization"] == "Basic " + base64.b64encode(b"AC123:tok").decode()
    form = {k: v[0] for k, v in parse_qs(post.content.decode()).items()}
    assert form == {
        "To": "+14155550100",
        "From": "SHOP",
        "Body": "Hi ✓",
        "StatusCallback": "https://hooks.example.com/v1/webhooks/twilio/status",
    }
    assert seen[1].url.path == "/2010-04-01/Accounts/AC123/Messages/SM1.json"
    assert update is not None and (update.status, update.error_code) == ("undelivered", "30003")


@pytest.mark.parametrize(
    ("status", "body", "expected", "opt_out"),
    [
        (400, {"code": 21610, "message": "unsubscribed"}, PermanentSendError, True),
        (400, {"code": 21614, "message": "not mobile"}, PermanentSendError, False),
        (401, {"code": 20003, "message": "Authenticate"}, ProviderConfigError, None),
        (429, {"code": 20429, "message": "Too Many Requests"}, TransientSendError, None),
    ],
)
async def test_twilio_errors(
    status: int, body: dict[str, object], expected: type[Exception], opt_out: bool | None
) -> None:
    transport, _ = mock(lambda r: httpx.Response(status, json=body))
    chan = twilio(transport)
    await chan.open()
    with pytest.raises(expected) as info:
        await chan.send(MSG)
    if opt_out is not None:
        assert info.value.opt_out is opt_out  # type: ignore[attr-defined]


def test_twilio_signature_matches_the_sdk_vector() -> None:
    params = {
        "CallSid": ["CA1234567890ABCDE"],
        "Caller": ["+14158675309"],
        "Digits": ["1234"],
        "From": ["+14158675309"],
        "To": ["+18005551212"],
    }
    assert (
        signature("https://mycompany.com/myapp.php?foo=1&bar=2", params, "12345")
        == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    )


async def test_whatsapp_template_payload_and_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        data = json.loads(request.content)
        if data["to"] == "15005550047":
            return httpx.Response(400, json={"error": {"code": 131047, "message": "Re-engagement message"}})
        if data["to"] == "15005550190":
            return httpx.Response(401, json={"error": {"code": 190, "message": "token expired"}})
        return httpx.Response(200, json={"messages": [{"id": "wamid.X"}]})

    transport, seen = mock(handler)
    chan = WhatsAppCloudChannel(
        WhatsAppCloudSettings(access_token=SecretStr("t"), base_url="https://graph.test/v21.0"),
        transport=transport,
    )
    await chan.open()
    template = {
        "name": "sale",
        "language": {"code": "en_US"},
        "components": [{"type": "body", "parameters": [{"type": "text", "text": "Ada"}]}],
    }
    msg = OutboundMessage("msg_2", "cmp_1", "+14155550100", "106540352242922", template=template)
    assert (await chan.send(msg)).provider_message_id == "wamid.X"
    body = json.loads(seen[0].content)
    assert seen[0].url.path == "/v21.0/106540352242922/messages"
    assert seen[0].headers["authorization"] == "Bearer t"
    assert body["type"] == "template" and body["template"] == template and body["to"] == "14155550100"
    with pytest.raises(PermanentSendError) as info:
        await chan.send(OutboundMessage("msg_3", "cmp_1", "+15005550047", "1065", body="hi"))
    assert info.value.code == "131047"
    with pytest.raises(ProviderConfigError):
        await chan.send(OutboundMessage("msg_4", "cmp_1", "+15005550190", "1065", body="hi"))
    failed = status_update({"id": "wamid.X", "status": "failed", "errors": [{"code": 131026}]})
    assert failed is not None and (failed.status, failed.error_code) == ("undelivered", "131026")


async def test_telegram_blocked_user_opts_out() -> None:
    transport, seen = mock(
        lambda r: httpx.Response(
            403,
            json={"ok": False, "error_code": 403, "description": "Forbidden: bot was blocked by the user"},
        )
    )
    chan = TelegramChannel(
        TelegramBotSettings(token=SecretStr("1:abc"), base_url="https://tg.test"), transport=transport
    )
    await chan.open()
    with pytest.raises(PermanentSendError) as info:
        await chan.send(OutboundMessage("msg_5", "cmp_1", "1234", "shop_bot", body="hi"))
    assert (info.value.code, info.value.opt_out) == ("bot_blocked", True)
    assert seen[0].url.path == "/bot1:abc/sendMessage"
    assert json.loads(seen[0].content) == {"chat_id": 1234, "text": "hi"}


async def test_slack_auth_errors_stop_the_chunk() -> None:
    transport, _ = mock(lambda r: httpx.Response(200, json={"ok": False, "error": "invalid_auth"}))
    chan = SlackChannel(
        SlackWebSettings(bot_token=SecretStr("xoxb-1"), base_url="https://slack.test/api"),
        transport=transport,
    )
    await chan.open()
    with pytest.raises(ProviderConfigError):
        await chan.send(OutboundMessage("msg_6", "cmp_1", "U1", "Shop", body="hi"))


async def test_smtp_reuses_one_connection_and_writes_proper_mime() -> None:
    with SmtpServer() as server:
        chan = SmtpChannel(SmtpSettings(host="127.0.0.1", port=server.port))
        await chan.open()
        ids = []
        for i in range(3):
            msg = OutboundMessage(
                f"msg_{i}",
                "cmp_9",
                f"c{i}@example.com",
                "news@example.com",
                body="Grüße, Ada ✓",
                subject="Sommer-Sale ☀",
            )
            ids.append((await chan.send(msg)).provider_message_id)
        smtp = chan.smtp
        await chan.close()
        assert smtp is not None and len(set(ids)) == 3
        assert server.handler.sessions == 1  # one SMTP session for the whole chunk
        assert len(server.handler.messages) == 3
        sender, rcpts, raw = server.handler.messages[0]
        email = message_from_bytes(raw)
        assert (sender, rcpts) == ("news@example.com", ["c0@example.com"])
        assert email["Subject"] == "Sommer-Sale ☀" or "utf-8" in email["Subject"].lower()
        assert email["Message-ID"].strip("<>") == ids[0]
        assert email["List-Unsubscribe"] == "<mailto:news@example.com?subject=unsubscribe>"
        assert email.get_content_charset() == "utf-8"
        assert email.get_payload(decode=True).decode("utf-8").strip() == "Grüße, Ada ✓"


async def test_no_answer_after_sending_is_outcome_unknown_but_never_connecting_is_transient() -> None:
    """Sent without an answer: an unknown outcome (looked up, never resent blindly); a GET just retries."""
    failures: list[Exception] = []

    def handler(request: httpx.Request) -> httpx.Response:
        raise failures.pop(0)

    transport, _seen = mock(handler)
    chan = twilio(transport)
    await chan.open()
    failures.append(httpx.ReadTimeout("no answer"))
    with pytest.raises(UnknownOutcomeError) as unknown:
        await chan.send(MSG)
    assert unknown.value.code == "outcome_unknown"
    failures.append(httpx.ConnectError("refused"))
    with pytest.raises(TransientSendError) as refused:
        await chan.send(MSG)
    assert refused.value.code == "connection_error"
    failures.append(httpx.ReadTimeout("slow lookup"))
    assert await chan.fetch_status("SM1", None) is None  # asked again at the next poll
    await chan.close()


async def test_twilio_finds_a_sent_message_by_recipient_sender_and_text() -> None:
    """GET Messages.json?To=&From=&DateSent>= (paged by next_page_uri), matched on the body and
    on date_created: what a lost answer is resolved with."""
    from datetime import UTC, datetime, timedelta
    from email.utils import format_datetime

    now = datetime.now(UTC)
    fresh, old = format_datetime(now, usegmt=True), format_datetime(now - timedelta(hours=2), usegmt=True)
    pages = {
        "0": {
            "messages": [
                {
                    "sid": "SM_other_text",
                    "to": MSG.to,
                    "body": "Something else",
                    "status": "sent",
                    "date_created": fresh,
                },
                {"sid": "SM_old", "to": MSG.to, "body": MSG.body, "status": "delivered", "date_created": old},
            ],
            "next_page_uri": "/2010-04-01/Accounts/AC123/Messages.json?To=%2B14155550100&Page=1&PageToken=x",
        },
        "1": {
            "messages": [
                {"sid": "SM_it", "to": MSG.to, "body": MSG.body, "status": "delivered", "date_created": fresh}
            ],
            "next_page_uri": None,
        },
    }

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=pages[request.url.params.get("Page", "0")])

    transport, seen = mock(handler)
    chan = twilio(transport)
    await chan.open()
    found = await chan.find_sent(MSG, now - timedelta(seconds=5))
    await chan.close()
    assert [(f.provider_message_id, f.status) for f in found] == [("SM_it", "delivered")]
    first = seen[0].url
    assert first.path == "/2010-04-01/Accounts/AC123/Messages.json"
    assert first.params["To"] == MSG.to and first.params["From"] == MSG.sender
    assert first.params["DateSent>="] == (now - timedelta(seconds=5)).strftime("%Y-%m-%d")
    assert seen[1].url.params["PageToken"] == "x"
    assert chan.sent_lookup_delay_s is not None


def test_email_headers_never_carry_line_breaks() -> None:
    """Regression: a contact name with a newline in a personalized subject raised ValueError in
    the MIME builder (and could have added headers)."""
    from channels.email_smtp import build_email

    message = OutboundMessage(
        message_id="msg_1",
        campaign_id="cmp_1",
        to="ada@example.com",
        sender="news@example.com",
        body="Hi",
        subject="Hello Ada\r\nBcc: victim@example.com",
    )
    email = build_email(message, "<id@example.com>")
    assert email["Subject"] == "Hello Ada Bcc: victim@example.com"
    assert email["Bcc"] is None
