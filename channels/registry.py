"""Which adapter serves a channel: an explicit table, no plugin magic."""

from __future__ import annotations

from collections.abc import Callable

from channels.base import Channel
from channels.sandbox import SandboxChannel
from core.settings import Settings

CHANNELS = ("sms", "whatsapp", "telegram", "email", "slack")

# provider name -> factory(channel name, settings). Real providers register here.
PROVIDERS: dict[str, Callable[[str, Settings], Channel]] = {
    "sandbox": lambda channel, settings: SandboxChannel(channel, settings.sandbox),
}


class UnknownProvider(ValueError):
    """The configured provider is not available for that channel."""


def build_channel(channel: str, settings: Settings) -> Channel:
    """A fresh adapter for `channel` per its CAMPAIGNS_<CHANNEL>__PROVIDER setting."""
    if channel not in CHANNELS:
        raise UnknownProvider(f"unknown channel {channel!r}")
    provider = settings.channel(channel).provider
    factory = PROVIDERS.get(provider)
    if factory is None:
        raise UnknownProvider(
            f"provider {provider!r} is not available for channel {channel!r}; "
            f"available: {', '.join(sorted(PROVIDERS))}"
        )
    return factory(channel, settings)
