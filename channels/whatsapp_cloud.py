"""WhatsApp through the Meta Cloud API.

POST {base}/{phone_number_id}/messages, Bearer token, JSON {messaging_product, to, type, text |
template}. 200 with messages[0].id (`wamid…`) is acceptance only: statuses (sent, delivered, read,
failed with errors[]) arrive by webhook. Errors are classified by `error.code`, never the HTTP
status (Meta answers the same code with 400 or 429)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

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
    error_code,
    json_or_empty,
    raise_for_transient_status,
    retry_after_seconds,
)


class WhatsAppCloudSettings(BaseModel):
    access_token: SecretStr = SecretStr("")
    app_secret: SecretStr = SecretStr("")
    verify_token: SecretStr = SecretStr("")
    base_url: str = "https://graph.facebook.com/v21.0"


RATE_LIMIT = frozenset({4, 80007, 130429, 131056})
TRANSIENT = frozenset({1, 2, 131000, 131016, 133004, 135000})
CONFIG = frozenset({0, 3, 10, 190, 368, 131031, 131042, 131048, 131064, 130497, 133010})
OPT_OUT = frozenset({131050})
# Recipient-side failures a status webhook reports after acceptance.
UNDELIVERED = frozenset({131026, 131049, 131050})


def status_update(status: dict[str, Any]) -> StatusUpdate | None:
    """One `statuses[]` item of a webhook → our update (None for statuses we do not track)."""
    wamid = status.get("id")
    value = status.get("status")
    if not isinstance(wamid, str) or not wamid or not isinstance(value, str):
        return None
    if value in ("delivered", "read", "played"):
        return StatusUpdate(wamid, "delivered")
    if value == "sent":
        return StatusUpdate(wamid, "sent")
    if value == "failed":
        errors = status.get("errors")
        first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
        code = error_code(first.get("code"))
        text = first.get("message") or first.get("title") or "failed"
        final = "undelivered" if code in UNDELIVERED else "failed"
        return StatusUpdate(wamid, final, str(code) if code is not None else None, str(text)[:1000])
    return None


class WhatsAppCloudChannel(NoSentLookup, HttpAdapter):
    """WhatsApp Cloud API adapter."""

    name = "whatsapp"
    # 80 messages/s per business phone number by default (Meta throughput doc).
    default_rate_per_second: float | None = 80.0
    default_concurrency = 20
    supports_status_lookup = False  # receipts come only by webhook

    def __init__(
        self,
        settings: WhatsAppCloudSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 10.0,
    ) -> None:
        if not settings.access_token.get_secret_value():
            raise ProviderConfigError("WhatsApp needs CAMPAIGNS_WHATSAPP_CLOUD__ACCESS_TOKEN")
        self.settings = settings
        super().__init__(
            settings.base_url,
            transport=transport,
            timeout=timeout,
            headers={"Authorization": f"Bearer {settings.access_token.get_secret_value()}"},
        )

    @staticmethod
    def payload(message: OutboundMessage) -> dict[str, Any]:
        """The Cloud API message object for a text or template message."""
        body: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": message.to.lstrip("+"),
            "biz_opaque_callback_data": message.message_id,
        }
        if message.template:
            body.update(type="template", template=message.template)
        else:
            body.update(type="text", text={"preview_url": False, "body": message.body or ""})
        return body

    async def send(self, message: OutboundMessage) -> SendResult:
        """POST /{phone_number_id}/messages; 200 → accepted (`sent`), receipts by webhook."""
        response = await self.call("POST", f"/{message.sender}/messages", json=self.payload(message))
        body = json_or_empty(response)
        if response.status_code == 200 and body.get("messages"):
            return SendResult(provider_message_id=str(body["messages"][0]["id"]), status="sent")
        error = body.get("error")
        if not isinstance(error, dict):
            error = {}
        code = error_code(error.get("code"))
        text = str(error.get("message") or f"HTTP {response.status_code}")
        if code in RATE_LIMIT:
            raise TransientSendError(text, code=str(code), retry_after=retry_after_seconds(response))
        if code in TRANSIENT or (code is None and response.status_code >= 500):
            raise TransientSendError(text, code=str(code or response.status_code))
        if code is None:
            raise_for_transient_status(response)
        if code in CONFIG or (200 <= int(code or 0) <= 299) or response.status_code == 401:
            raise ProviderConfigError(f"WhatsApp refused the request ({code}): {text}")
        raise PermanentSendError(text, code=str(code or response.status_code), opt_out=code in OPT_OUT)

    async def fetch_status(self, provider_message_id: str, sent_at: datetime | None) -> StatusUpdate | None:
        """No lookup exists; statuses arrive at /v1/webhooks/whatsapp."""
        return None


def verify_signature(raw_body: bytes, app_secret: str, header: str | None) -> bool:
    """X-Hub-Signature-256: "sha256=" + hex HMAC-SHA256 of the raw body with the app secret."""
    import hashlib
    import hmac

    if not header or not app_secret or not header.startswith("sha256="):
        return False
    expected = hmac.new(app_secret.encode(), raw_body, hashlib.sha256).hexdigest()
    # Bytes: compare_digest refuses str with non-ASCII characters (a header can carry any).
    return hmac.compare_digest(expected.encode(), header.removeprefix("sha256=").encode("utf-8", "replace"))


def _objects(value: Any) -> list[dict[str, Any]]:
    """The objects of a JSON array (anything else in a webhook payload is ignored)."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def updates_from_webhook(payload: dict[str, Any]) -> list[StatusUpdate]:
    """Every status update in a (possibly batched) webhook payload; odd shapes are skipped."""
    updates = []
    for entry in _objects(payload.get("entry")):
        for change in _objects(entry.get("changes")):
            value = change.get("value")
            for status in _objects(value.get("statuses") if isinstance(value, dict) else None):
                update = status_update(status)
                if update is not None:
                    updates.append(update)
    return updates
