from __future__ import annotations

from datetime import timedelta

import pytest

from channels.base import Channel, OutboundMessage, PermanentSendError
from channels.sandbox import SandboxChannel
from core.channels import UnknownProvider, build_channel
from core.settings import SandboxSettings, Settings
from core.timeutil import utcnow


def msg(i: int, to: str = "+14155550100") -> OutboundMessage:
    return OutboundMessage(message_id=f"msg_{i:024x}", campaign_id="cmp_x", to=to, sender="S", body="hi")


def test_every_channel_defaults_to_the_sandbox() -> None:
    for name in ("sms", "whatsapp", "telegram", "email", "slack"):
        channel = build_channel(name, Settings())
        assert isinstance(channel, SandboxChannel) and isinstance(channel, Channel)
        assert channel.name == name


def test_unknown_provider_is_a_clear_error() -> None:
    with pytest.raises(UnknownProvider, match="'carrier-pigeon' is not available"):
        build_channel("sms", Settings(sms={"provider": "carrier-pigeon"}))


async def test_outcomes_follow_the_configured_rates_and_are_deterministic() -> None:
    channel = SandboxChannel(
        "sms", SandboxSettings(failure_rate=0.2, undelivered_rate=0.1, delivery_delay_s=0)
    )
    rejected = delivered = undelivered = 0
    ids = []
    for i in range(2000):
        try:
            result = await channel.send(msg(i))
        except PermanentSendError as exc:
            assert exc.code == "sandbox_rejected"
            rejected += 1
            continue
        ids.append(result.provider_message_id)
        update = await channel.fetch_status(result.provider_message_id, None)
        assert update is not None
        if update.status == "delivered":
            delivered += 1
        else:
            assert (update.status, update.error_code) == ("undelivered", "sandbox_undelivered")
            undelivered += 1
    assert 300 <= rejected <= 500
    assert 100 <= undelivered <= 220
    # A second process would see the same outcome for the same message.
    again = SandboxChannel("sms", SandboxSettings(failure_rate=0.2, undelivered_rate=0.1))
    assert (
        [(await again.fetch_status(p, None)).status for p in ids[:50]]
        == [  # type: ignore[union-attr]
            (await channel.fetch_status(p, None)).status for p in ids[:50]
        ]
    )  # type: ignore[union-attr]


async def test_receipts_wait_for_the_delivery_delay() -> None:
    channel = SandboxChannel("sms", SandboxSettings(delivery_delay_s=60))
    result = await channel.send(msg(1))
    assert result.status == "sent"
    assert await channel.fetch_status(result.provider_message_id, utcnow()) is None
    old = utcnow() - timedelta(seconds=61)
    assert (await channel.fetch_status(result.provider_message_id, old)).status == "delivered"  # type: ignore[union-attr]


async def test_magic_invalid_recipient() -> None:
    channel = SandboxChannel("sms", SandboxSettings())
    with pytest.raises(PermanentSendError) as info:
        await channel.send(msg(1, to="+15005550001"))
    assert info.value.code == "invalid_recipient"
