"""One table-driven contract: every real adapter, against its fake server on 127.0.0.1, through
the same scenarios (accept, permanent error, 429 with retry-after, 5xx, timeout, connection
refused). Adapters return a SendResult or raise one of the two send errors, nothing else.
Each case is a channel's provider; `sendgrid` is email's second one."""

from __future__ import annotations

import dataclasses
import socket

import pytest
from pydantic import SecretStr

from channels.base import (
    Channel,
    OutboundMessage,
    PermanentSendError,
    SendResult,
    TransientSendError,
    UnknownOutcomeError,
)
from channels.email_sendgrid import SendGridChannel
from channels.email_smtp import SmtpChannel
from channels.slack_web import SlackChannel
from channels.sms_twilio import TwilioChannel
from channels.telegram_bot import TelegramChannel
from channels.whatsapp_cloud import WhatsAppCloudChannel
from core.settings import (
    SendGridSettings,
    SlackWebSettings,
    SmtpSettings,
    TelegramBotSettings,
    TwilioSettings,
    WhatsAppCloudSettings,
)
from tests.providers import fake_server as fk

CHANNELS = ["sms", "whatsapp", "telegram", "slack", "email", "sendgrid"]
# The channel whose magic addresses and sender a provider case uses (its own name otherwise).
CHANNEL_OF = {"sendgrid": "email"}
SENDERS = {
    "sms": "SHOP",
    "whatsapp": "106540352242922",
    "telegram": "shop_bot",
    "slack": "Shop",
    "email": "news@example.com",
}
PERMANENT_CODES = {
    "sms": "21211",
    "whatsapp": "131009",
    "telegram": "chat_not_found",
    "slack": "channel_not_found",
    "email": "550",
    "sendgrid": "400",
}
# SendGrid says when its window resets (X-RateLimit-Reset, whole epoch seconds; the fake: 2 s
# ahead), so its wait is between 1 and 2 s.
RETRY_AFTER = {"sms": 1.0, "whatsapp": None, "telegram": 1.0, "slack": 1.0, "email": None, "sendgrid": 1.5}
RETRY_AFTER_TOLERANCE = {"sendgrid": 0.55}
# Accepted with a receipt to follow (the others report delivery with the answer).
ACCEPTED_ONLY = ("sms", "whatsapp", "sendgrid")
TIMEOUT = 0.5


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def adapter(channel: str, base: str, smtp_port: int) -> Channel:
    if channel == "sms":
        return TwilioChannel(
            TwilioSettings(
                account_sid=fk.TWILIO_SID, auth_token=SecretStr(fk.TWILIO_TOKEN), base_url=f"{base}/twilio"
            ),
            timeout=TIMEOUT,
        )
    if channel == "whatsapp":
        return WhatsAppCloudChannel(
            WhatsAppCloudSettings(
                access_token=SecretStr(fk.WHATSAPP_TOKEN), base_url=f"{base}/whatsapp/v21.0"
            ),
            timeout=TIMEOUT,
        )
    if channel == "telegram":
        return TelegramChannel(
            TelegramBotSettings(token=SecretStr(fk.TELEGRAM_TOKEN), base_url=f"{base}/telegram"),
            timeout=TIMEOUT,
        )
    if channel == "slack":
        return SlackChannel(
            SlackWebSettings(bot_token=SecretStr(fk.SLACK_TOKEN), base_url=f"{base}/slack/api"),
            timeout=TIMEOUT,
        )
    if channel == "sendgrid":
        return SendGridChannel(
            SendGridSettings(api_key=SecretStr(fk.SENDGRID_KEY), base_url=f"{base}/sendgrid"), timeout=TIMEOUT
        )
    return SmtpChannel(SmtpSettings(host="127.0.0.1", port=smtp_port), timeout=TIMEOUT)


def message(channel: str, scenario: str) -> OutboundMessage:
    return OutboundMessage(
        message_id="msg_0123456789abcdef01234567",
        campaign_id="cmp_x",
        to=fk.SCENARIOS[scenario][CHANNEL_OF.get(channel, channel)],
        sender=SENDERS[CHANNEL_OF.get(channel, channel)],
        body=f"Hello from the {scenario} test ✓",
        subject="Contract",
    )


async def send(
    channel: str,
    scenario: str,
    fakes: fk.FakeProviders,
    smtp: fk.SmtpServer,
    base: str | None = None,
    smtp_port: int | None = None,
) -> SendResult:
    chan = adapter(channel, base or fakes.url, smtp_port or smtp.port)  # type: ignore[attr-defined]
    assert isinstance(chan, Channel)
    await chan.open()
    try:
        return await chan.send(message(channel, scenario))
    finally:
        await chan.close()


@pytest.mark.parametrize("channel", CHANNELS)
async def test_accept(channel: str, fakes: fk.FakeProviders, smtp: fk.SmtpServer) -> None:
    to = fk.SCENARIOS["accept"][CHANNEL_OF.get(channel, channel)]
    before = smtp.handler.count(to) if channel == "email" else fakes.count(channel, to)
    result = await send(channel, "accept", fakes, smtp)
    assert result.provider_message_id
    assert result.status == ("sent" if channel in ACCEPTED_ONLY else "delivered")
    after = smtp.handler.count(to) if channel == "email" else fakes.count(channel, to)
    assert after == before + 1
    if channel != "email":
        assert fakes.received[-1].body == "Hello from the accept test ✓"


@pytest.mark.parametrize("channel", CHANNELS)
async def test_permanent_error(channel: str, fakes: fk.FakeProviders, smtp: fk.SmtpServer) -> None:
    with pytest.raises(PermanentSendError) as info:
        await send(channel, "permanent", fakes, smtp)
    assert info.value.code == PERMANENT_CODES[channel]


@pytest.mark.parametrize("channel", CHANNELS)
async def test_rate_limited_is_transient_with_retry_after(
    channel: str, fakes: fk.FakeProviders, smtp: fk.SmtpServer
) -> None:
    with pytest.raises(TransientSendError) as info:
        await send(channel, "rate_limited", fakes, smtp)
    expected = RETRY_AFTER[channel]
    if expected is None:
        assert info.value.retry_after is None
    else:
        assert info.value.retry_after == pytest.approx(expected, abs=RETRY_AFTER_TOLERANCE.get(channel, 0))


@pytest.mark.parametrize("channel", CHANNELS)
async def test_server_error_is_transient(channel: str, fakes: fk.FakeProviders, smtp: fk.SmtpServer) -> None:
    with pytest.raises(TransientSendError):
        await send(channel, "server_error", fakes, smtp)


@pytest.mark.parametrize("channel", [c for c in CHANNELS if c != "email"])
async def test_a_request_sent_without_an_answer_is_an_unknown_outcome(
    channel: str, fakes: fk.FakeProviders, smtp: fk.SmtpServer
) -> None:
    # The provider may have accepted it: resending blindly could deliver it twice (SPEC §7).
    with pytest.raises(UnknownOutcomeError) as info:
        await send(channel, "timeout", fakes, smtp)
    assert info.value.code == "outcome_unknown"


@pytest.mark.parametrize("channel", CHANNELS)
async def test_a_lost_answer_is_found_where_the_provider_can_list_what_it_sent(
    channel: str, fakes: fk.FakeProviders, smtp: fk.SmtpServer
) -> None:
    """Where the provider has a lookup (Twilio), the message whose answer was lost is found by
    recipient, sender and text; a message never sent is not found. Others have none."""
    import asyncio
    from datetime import timedelta

    from core.timeutil import utcnow

    since = utcnow()
    sent = dataclasses.replace(message(channel, "timeout"), body=f"lost answer {since.timestamp()}")
    chan = adapter(channel, fakes.url, smtp.port)  # type: ignore[attr-defined]
    await chan.open()
    try:
        with pytest.raises((UnknownOutcomeError, TransientSendError)):
            await chan.send(sent)
        if chan.sent_lookup_delay_s is None:
            assert channel != "sms"
            assert await chan.find_sent(sent, since) == []
            return
        await asyncio.sleep(fk.SLOW_S)  # the fake records it once its slow answer is ready
        found = await chan.find_sent(sent, since)
        assert len(found) == 1 and found[0].provider_message_id in fakes.twilio_messages
        # Another text to the same recipient is not it, nor is anything older than `since`.
        assert await chan.find_sent(dataclasses.replace(sent, body="never sent"), since) == []
        assert await chan.find_sent(sent, utcnow() + timedelta(minutes=5)) == []
    finally:
        await chan.close()


async def test_smtp_timeout_is_transient(fakes: fk.FakeProviders, smtp: fk.SmtpServer) -> None:
    with pytest.raises(TransientSendError) as info:
        await send("email", "timeout", fakes, smtp)
    assert info.value.code in ("timeout", "connection_error")


@pytest.mark.parametrize("channel", CHANNELS)
async def test_connection_refused_is_transient(
    channel: str, fakes: fk.FakeProviders, smtp: fk.SmtpServer
) -> None:
    port = closed_port()
    with pytest.raises(TransientSendError) as info:
        await send(channel, "accept", fakes, smtp, base=f"http://127.0.0.1:{port}", smtp_port=port)
    assert info.value.code == "connection_error"


# -- SendGrid beyond the shared scenarios: account errors, its validation, its signed events --


async def _sendgrid_send(base: str, message: OutboundMessage, key: str = fk.SENDGRID_KEY) -> SendResult:
    chan = SendGridChannel(
        SendGridSettings(api_key=SecretStr(key), base_url=f"{base}/sendgrid"), timeout=TIMEOUT
    )
    await chan.open()
    try:
        return await chan.send(message)
    finally:
        await chan.close()


async def test_sendgrid_refusing_the_account_is_a_config_error(fakes: fk.FakeProviders) -> None:
    from channels.base import ProviderConfigError

    accept = message("sendgrid", "accept")
    with pytest.raises(ProviderConfigError, match="401"):
        await _sendgrid_send(fakes.url, accept, key="SG.revoked")  # type: ignore[attr-defined]
    unverified = dataclasses.replace(accept, sender=f"news@{fk.SENDGRID_UNVERIFIED_DOMAIN}")
    with pytest.raises(ProviderConfigError, match="verified Sender Identity"):
        await _sendgrid_send(fakes.url, unverified)  # type: ignore[attr-defined]


async def test_sendgrid_accepts_both_parts_and_refuses_what_sendgrid_refuses(fakes: fk.FakeProviders) -> None:
    both = dataclasses.replace(
        message("sendgrid", "accept"),
        html="<p>Hello ✓</p>",
        unsubscribe_url="https://campaigns.example.com/v1/unsubscribe/tok",
    )
    result = await _sendgrid_send(fakes.url, both)  # type: ignore[attr-defined]
    stored = fakes.sendgrid_messages[result.provider_message_id]
    assert [p["type"] for p in stored["data"]["content"]] == ["text/plain", "text/html"]
    assert stored["data"]["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    with pytest.raises(PermanentSendError, match="subject is required") as info:
        await _sendgrid_send(fakes.url, dataclasses.replace(both, subject=""))  # type: ignore[attr-defined]
    assert info.value.code == "400"
    with pytest.raises(PermanentSendError, match="content value"):
        await _sendgrid_send(fakes.url, dataclasses.replace(both, body="", html=None))  # type: ignore[attr-defined]


async def test_sendgrid_posts_signed_event_batches(fakes: fk.FakeProviders) -> None:
    """The fake's batches verify with the adapter's own check, name the send's X-Message-Id and
    carry our custom args; a `bounce…` recipient bounces, others are delivered."""
    import asyncio
    import json

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from channels.email_sendgrid import SIGNATURE_HEADER, TIMESTAMP_HEADER, provider_id, verify_signature

    batches: list[list[dict[str, object]]] = []

    async def hook(request: Request) -> Response:
        raw = await request.body()
        headers = request.headers
        if not verify_signature(
            fk.SENDGRID_PUBLIC_KEY, raw, headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER]
        ):
            return Response(status_code=403)
        batches.append(json.loads(raw))
        return Response(status_code=200)

    with fk.ServerThread(
        Starlette(routes=[Route("/v1/webhooks/sendgrid", hook, methods=["POST"])])
    ) as receiver:
        fakes.sendgrid_webhook_url = receiver.url
        try:
            ok = await _sendgrid_send(fakes.url, message("sendgrid", "accept"))  # type: ignore[attr-defined]
            bounced = await _sendgrid_send(
                fakes.url,  # type: ignore[attr-defined]
                dataclasses.replace(
                    message("sendgrid", "accept"), message_id="msg_b", to="bounce1@example.com"
                ),
            )
            for _ in range(100):
                events = [e for batch in batches for e in batch]
                if sum(1 for e in events if e["event"] != "processed") >= 2:
                    break
                await asyncio.sleep(0.05)
        finally:
            fakes.sendgrid_webhook_url = None
    final = {provider_id(e["sg_message_id"]): e for e in events if e["event"] != "processed"}
    assert final[ok.provider_message_id]["event"] == "delivered"
    assert final[ok.provider_message_id]["campaigns_message_id"] == "msg_0123456789abcdef01234567"
    assert final[bounced.provider_message_id]["event"] == "bounce"
    assert final[bounced.provider_message_id]["campaigns_message_id"] == "msg_b"
    assert fakes.sendgrid_webhook_answers[-1] == 200
