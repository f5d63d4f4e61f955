"""Slack through the Web API `chat.postMessage`.

POST {base}/chat.postMessage, Bearer bot token, JSON {channel, text} with the contact's
`slack_user_id` as channel. Application errors come back as HTTP 200 with `ok: false`; HTTP 429
carries Retry-After. `ok: true` is delivered (platform level)."""

from __future__ import annotations

from datetime import datetime

import httpx
from pydantic import BaseModel, SecretStr

from channels.base import (
    NoSentLookup,
    OutboundMessage,
    PermanentSendError,
    ProviderConfigError,
    SendResult,
    StatusUpdate,
    TransientSendError,
)
from channels.http import (
    HttpAdapter,
    json_or_empty,
    raise_for_transient_status,
    retry_after_seconds,
)


class SlackWebSettings(BaseModel):
    bot_token: SecretStr = SecretStr("")
    base_url: str = "https://slack.com/api"


RATE_LIMITED = frozenset({"ratelimited", "rate_limited"})
SERVER_SIDE = frozenset({"internal_error", "service_unavailable", "request_timeout", "fatal_error"})
CONFIG = frozenset(
    {
        "not_authed",
        "invalid_auth",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "missing_scope",
        "no_permission",
        "ekm_access_denied",
        "not_allowed_token_type",
    }
)


class SlackChannel(NoSentLookup, HttpAdapter):
    """Slack Web API adapter."""

    name = "slack"
    # chat.postMessage is "special tier": about 1/s per channel plus an unpublished workspace
    # cap; every recipient is its own DM channel here, so pace the workspace at 10/s.
    default_rate_per_second: float | None = 10.0
    default_concurrency = 10
    supports_status_lookup = False

    def __init__(
        self,
        settings: SlackWebSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 10.0,
    ) -> None:
        if not settings.bot_token.get_secret_value():
            raise ProviderConfigError("Slack needs CAMPAIGNS_SLACK_WEB__BOT_TOKEN")
        self.settings = settings
        super().__init__(
            settings.base_url,
            transport=transport,
            timeout=timeout,
            headers={"Authorization": f"Bearer {settings.bot_token.get_secret_value()}"},
        )

    async def send(self, message: OutboundMessage) -> SendResult:
        """chat.postMessage; ok → delivered."""
        response = await self.call(
            "POST", "/chat.postMessage", json={"channel": message.to, "text": message.body or ""}
        )
        body = json_or_empty(response)
        if response.status_code == 200 and body.get("ok"):
            return SendResult(
                provider_message_id=f"{body.get('channel', message.to)}:{body.get('ts')}", status="delivered"
            )
        error = str(body.get("error") or f"http_{response.status_code}")
        if response.status_code == 429 or error in RATE_LIMITED:
            raise TransientSendError(
                error, code="ratelimited", retry_after=retry_after_seconds(response) or 1.0
            )
        raise_for_transient_status(response)
        if error in SERVER_SIDE:
            raise TransientSendError(error, code=error)
        if error in CONFIG:
            raise ProviderConfigError(f"Slack refused the bot token: {error}")
        raise PermanentSendError(error, code=error)

    async def fetch_status(self, provider_message_id: str, sent_at: datetime | None) -> StatusUpdate | None:
        """Slack posts are final when sent."""
        return None
