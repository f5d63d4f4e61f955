"""One table-driven contract: every real adapter, against its fake server on 127.0.0.1, through
the same scenarios (accept, permanent error, 429 with retry-after, 5xx, timeout, connection
refused). Adapters return a SendResult or raise one of the two send errors, nothing else."""

from __future__ import annotations

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
from channels.email_smtp import SmtpChannel
from channels.slack_web import SlackChannel
from channels.sms_twilio import TwilioChannel
from channels.telegram_bot import TelegramChannel
from channels.whatsapp_cloud import WhatsAppCloudChannel
from core.settings import (
    SlackWebSettings,
    SmtpSettings,
    TelegramBotSettings,
    TwilioSettings,
    WhatsAppCloudSettings,
)
from tests.providers import fake_server as fk

CHANNELS = ["sms", "whatsapp", "telegram", "slack", "email"]
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
}
RETRY_AFTER = {"sms": 1.0, "whatsapp": None, "telegram": 1.0, "slack": 1.0, "email": None}
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
    return SmtpChannel(SmtpSettings(host="127.0.0.1", port=smtp_port), timeout=TIMEOUT)


def message(channel: str, scenario: str) -> OutboundMessage:
    return OutboundMessage(
        message_id="msg_0123456789abcdef01234567",
        campaign_id="cmp_x",
        to=fk.SCENARIOS[scenario][channel],
        sender=SENDERS[channel],
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
    to = fk.SCENARIOS["accept"][channel]
    before = smtp.handler.count(to) if channel == "email" else fakes.count(channel, to)
    result = await send(channel, "accept", fakes, smtp)
    assert result.provider_message_id
    assert result.status == ("sent" if channel in ("sms", "whatsapp") else "delivered")
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
    assert info.value.retry_after == RETRY_AFTER[channel]


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
    import dataclasses
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
