"""Telegram through the Bot API `sendMessage`.

POST {base}/bot{token}/sendMessage with JSON {chat_id, text}. `ok: true` means Telegram stored the
message in the chat: delivered at platform level (the Bot API has no receipts). Errors carry
{"ok": false, "error_code", "description", "parameters": {"retry_after"}}; like
python-telegram-bot we classify by HTTP status and `parameters`, since error_code may change."""

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
from channels.http import HttpAdapter, json_or_empty, raise_for_transient_status


class TelegramBotSettings(BaseModel):
    token: SecretStr = SecretStr("")
    base_url: str = "https://api.telegram.org"


def _code(description: str) -> str:
    text = description.lower()
    for needle, code in (
        ("bot was blocked", "bot_blocked"),
        ("user is deactivated", "user_deactivated"),
        ("chat not found", "chat_not_found"),
        ("can't initiate conversation", "cant_initiate_conversation"),
        ("bot was kicked", "bot_kicked"),
        ("message is too long", "message_too_long"),
        ("can't parse entities", "cant_parse_entities"),
    ):
        if needle in text:
            return code
    return "bad_request"


def _seconds(value: object) -> float:
    """`parameters.retry_after` as seconds (1 when it is missing or not a number)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return 1.0


class TelegramChannel(NoSentLookup, HttpAdapter):
    """Telegram Bot API adapter."""

    name = "telegram"
    # Bot FAQ: about 30 messages/s for bulk notifications (1/s per chat; one message per chat here).
    default_rate_per_second: float | None = 30.0
    default_concurrency = 10
    supports_status_lookup = False

    def __init__(
        self,
        settings: TelegramBotSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 10.0,
    ) -> None:
        if not settings.token.get_secret_value():
            raise ProviderConfigError("Telegram needs CAMPAIGNS_TELEGRAM_BOT__TOKEN")
        self.settings = settings
        # The token is in every URL path: keep it out of error texts.
        super().__init__(
            settings.base_url,
            transport=transport,
            timeout=timeout,
            secrets=(settings.token.get_secret_value(),),
        )

    async def send(self, message: OutboundMessage) -> SendResult:
        """sendMessage; ok → delivered (platform level)."""
        token = self.settings.token.get_secret_value()
        chat_id: int | str = int(message.to) if message.to.lstrip("-").isdigit() else message.to
        response = await self.call(
            "POST",
            f"/bot{token}/sendMessage",
            json={"chat_id": chat_id, "text": message.body or ""},
        )
        body = json_or_empty(response)
        if response.status_code == 200 and body.get("ok"):
            result = body.get("result")
            message_id = result.get("message_id") if isinstance(result, dict) else None
            return SendResult(provider_message_id=f"{message.to}:{message_id}", status="delivered")
        description = str(body.get("description") or f"HTTP {response.status_code}")[:500]
        parameters = body.get("parameters")
        retry_after = parameters.get("retry_after") if isinstance(parameters, dict) else None
        if response.status_code == 429 or retry_after is not None:
            raise TransientSendError(description, code="429", retry_after=_seconds(retry_after))
        raise_for_transient_status(response)
        if response.status_code in (401, 404):
            raise ProviderConfigError(f"Telegram rejected the bot token: {description}")
        if response.status_code == 403:
            code = _code(description)
            raise PermanentSendError(description, code=code, opt_out=code == "bot_blocked")
        raise PermanentSendError(description, code=_code(description))

    async def fetch_status(self, provider_message_id: str, sent_at: datetime | None) -> StatusUpdate | None:
        """Telegram has no receipts: messages are final when sent."""
        return None
