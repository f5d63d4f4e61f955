"""Which adapter serves a channel: an explicit table, no plugin magic (in core: it reads the
composed Settings, which channels/ must not import)."""

from __future__ import annotations

from collections.abc import Callable

from channels.base import Channel
from channels.email_sendgrid import SendGridChannel
from channels.email_smtp import SmtpChannel
from channels.sandbox import SandboxChannel
from channels.slack_web import SlackChannel
from channels.sms_twilio import TwilioChannel
from channels.telegram_bot import TelegramChannel
from channels.whatsapp_cloud import WhatsAppCloudChannel
from core.settings import Settings

CHANNELS = ("sms", "whatsapp", "telegram", "email", "slack")

Factory = Callable[[str, Settings], Channel]

# provider name -> (the channels it serves, factory(channel name, settings))
PROVIDERS: dict[str, tuple[frozenset[str], Factory]] = {
    "sandbox": (frozenset(CHANNELS), lambda channel, s: SandboxChannel(channel, s.sandbox)),
    "twilio": (
        frozenset({"sms"}),
        lambda _c, s: TwilioChannel(s.twilio, public_url=s.public_url, timeout=s.delivery.request_timeout_s),
    ),
    "cloud_api": (
        frozenset({"whatsapp"}),
        lambda _c, s: WhatsAppCloudChannel(s.whatsapp_cloud, timeout=s.delivery.request_timeout_s),
    ),
    "bot_api": (
        frozenset({"telegram"}),
        lambda _c, s: TelegramChannel(s.telegram_bot, timeout=s.delivery.request_timeout_s),
    ),
    "smtp": (frozenset({"email"}), lambda _c, s: SmtpChannel(s.smtp, timeout=s.delivery.request_timeout_s)),
    "sendgrid": (
        frozenset({"email"}),
        lambda _c, s: SendGridChannel(s.sendgrid, timeout=s.delivery.request_timeout_s),
    ),
    "web_api": (
        frozenset({"slack"}),
        lambda _c, s: SlackChannel(s.slack_web, timeout=s.delivery.request_timeout_s),
    ),
}


class UnknownProvider(ValueError):
    """The configured provider is not available for that channel."""


def build_channel(channel: str, settings: Settings) -> Channel:
    """A fresh adapter for `channel` per its CAMPAIGNS_<CHANNEL>__PROVIDER setting."""
    if channel not in CHANNELS:
        raise UnknownProvider(f"unknown channel {channel!r}")
    provider = settings.channel(channel).provider
    served, factory = PROVIDERS.get(provider, (frozenset(), None))
    if factory is None or channel not in served:
        available = sorted(name for name, (chans, _f) in PROVIDERS.items() if channel in chans)
        raise UnknownProvider(
            f"provider {provider!r} is not available for channel {channel!r}; "
            f"available: {', '.join(available)}"
        )
    return factory(channel, settings)
