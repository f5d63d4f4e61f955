"""Email through the SendGrid v3 Mail Send API, with receipts from its Signed Event Webhook.

Send: POST {base}/v3/mail/send, Bearer API key, JSON with one personalization (one `to`) per
message, `custom_args` naming our message and campaign (SendGrid merges them into every event),
text/plain then text/html content, and the RFC 8058 one-click unsubscribe headers. 202 with an
`X-Message-Id` header is acceptance only: `delivered`, `bounce`, `dropped`, `spamreport` arrive
at /v1/webhooks/sendgrid, each event's `sg_message_id` being that id plus a `.filter…` suffix.
Errors come back as {"errors": [{"message", "field", "help"}]}; 429 carries
X-RateLimit-Reset (epoch seconds). SendGrid has no per-message lookup.

Event webhook signature: ECDSA P-256 / SHA-256 over the timestamp header followed by the raw
body, base64 DER in X-Twilio-Email-Event-Webhook-Signature, verified with the account's public
key (base64 DER SubjectPublicKeyInfo, as SendGrid's settings page shows it)."""

from __future__ import annotations

import base64
import binascii
import time
from datetime import datetime
from email.utils import parseaddr
from functools import lru_cache
from typing import Any

import httpx
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key
from pydantic import BaseModel, Field, SecretStr

from channels.base import (
    NoSentLookup,
    OutboundMessage,
    PermanentSendError,
    ProviderConfigError,
    SendResult,
    StatusUpdate,
    TransientSendError,
    capped_retry_after,
)
from channels.email_smtp import header_value
from channels.http import HttpAdapter, json_or_empty, raise_for_transient_status, retry_after_seconds


class SendGridSettings(BaseModel):
    api_key: SecretStr = SecretStr("")
    base_url: str = "https://api.sendgrid.com"
    # Settings → Mail Settings → Signed Event Webhook: the verification key as SendGrid shows it.
    webhook_public_key: str = ""
    # Signed batches older (or newer) than this many seconds are refused as replays. Off by
    # default: events only ever move a message forward and opt-outs are idempotent, so a
    # replayed genuine batch changes nothing, while SendGrid retries a failed POST for 24 hours
    # (with, as far as its documentation says, the original signature and timestamp).
    webhook_max_skew_s: float | None = Field(default=None, gt=0)


# The custom args each message carries; SendGrid copies them into every event as top-level fields.
MESSAGE_ID_ARG = "campaigns_message_id"
CAMPAIGN_ID_ARG = "campaigns_campaign_id"
SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
# A bad key, a sender identity not verified (403), or a wrong base URL: every message would fail.
CONFIG_STATUSES = frozenset({401, 403, 404})


def provider_id(sg_message_id: object) -> str | None:
    """The X-Message-Id of the send inside an event's `sg_message_id` (the part before its first
    dot), which is what a message stores as provider_message_id."""
    if not isinstance(sg_message_id, str):
        return None
    head = sg_message_id.split(".", 1)[0].strip()
    return head or None


def _address(value: str) -> dict[str, str]:
    """{"email", "name"} from `news@shop.example` or `Shop <news@shop.example>`."""
    name, address = parseaddr(header_value(value))
    return {"email": address or value, **({"name": name} if name else {})}


def _error_text(response: httpx.Response) -> str:
    errors = json_or_empty(response).get("errors")
    first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
    text = str(first.get("message") or f"HTTP {response.status_code}")
    if first.get("field"):
        text += f" ({first['field']})"
    return text[:500]


def _rate_limit_wait(response: httpx.Response) -> float | None:
    """Retry-After if given, else until X-RateLimit-Reset (epoch seconds), as SendGrid signals it."""
    wait = retry_after_seconds(response)
    if wait is not None:
        return wait
    try:
        return capped_retry_after(float(response.headers.get("x-ratelimit-reset", "")) - time.time())
    except ValueError:
        return None


class SendGridChannel(NoSentLookup, HttpAdapter):
    """SendGrid v3 Mail Send adapter."""

    name = "email"
    # SendGrid publishes no mail/send rate: limits are per endpoint and account, signalled by 429
    # + X-RateLimit-Reset, which the sender honours (third-party reports go up to 10,000/s). 100
    # requests/s, one message each, is a conservative start; raise CAMPAIGNS_EMAIL__RATE_PER_SECOND.
    default_rate_per_second: float | None = 100.0
    default_concurrency = 20
    supports_status_lookup = False  # receipts come only by the event webhook

    def __init__(
        self,
        settings: SendGridSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 10.0,
    ) -> None:
        if not settings.api_key.get_secret_value():
            raise ProviderConfigError("SendGrid needs CAMPAIGNS_SENDGRID__API_KEY")
        self.settings = settings
        super().__init__(
            settings.base_url,
            transport=transport,
            timeout=timeout,
            headers={
                "Authorization": f"Bearer {settings.api_key.get_secret_value()}",
                "Accept": "application/json",
            },
        )

    @staticmethod
    def payload(message: OutboundMessage) -> dict[str, Any]:
        """The mail/send body for one message to one recipient."""
        content = []
        if message.body or not message.html:  # SendGrid refuses an empty content list
            content.append({"type": "text/plain", "value": message.body or ""})
        if message.html:  # after text/plain: SendGrid requires that order
            content.append({"type": "text/html", "value": message.html})
        body: dict[str, Any] = {
            "personalizations": [
                {
                    "to": [{"email": message.to}],
                    "custom_args": {MESSAGE_ID_ARG: message.message_id, CAMPAIGN_ID_ARG: message.campaign_id},
                }
            ],
            "from": _address(message.sender),
            "subject": header_value(message.subject or ""),
            "content": content,
        }
        if message.unsubscribe_url:
            body["headers"] = {
                "List-Unsubscribe": f"<{header_value(message.unsubscribe_url)}>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            }
        return body

    async def send(self, message: OutboundMessage) -> SendResult:
        """POST /v3/mail/send; 202 → accepted (`sent`), receipts by event webhook."""
        response = await self.call("POST", "/v3/mail/send", json=self.payload(message))
        if response.status_code in (200, 202):
            # Always present on a 202; should a proxy strip it, the events still find the message
            # by its `campaigns_message_id` custom arg.
            return SendResult(
                provider_message_id=response.headers.get("x-message-id") or message.message_id, status="sent"
            )
        text = _error_text(response)
        if response.status_code == 429:
            raise TransientSendError(text, code="429", retry_after=_rate_limit_wait(response))
        raise_for_transient_status(response)
        if response.status_code in CONFIG_STATUSES:
            raise ProviderConfigError(f"SendGrid refused the request (HTTP {response.status_code}): {text}")
        raise PermanentSendError(text, code=str(response.status_code))

    async def fetch_status(self, provider_message_id: str, sent_at: datetime | None) -> StatusUpdate | None:
        """No lookup exists; events arrive at /v1/webhooks/sendgrid."""
        return None


@lru_cache(maxsize=8)
def load_public_key(value: str) -> ec.EllipticCurvePublicKey | None:
    """The P-256 verification key from base64 DER (as SendGrid shows it) or PEM; None if it is
    not one."""
    text = value.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = load_pem_public_key(text.encode("ascii"))
        else:
            key = load_der_public_key(base64.b64decode(text, validate=True))
    except (ValueError, UnsupportedAlgorithm):  # binascii.Error is a ValueError
        return None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        return None
    return key


def verify_signature(public_key: str, payload: bytes, signature: str | None, timestamp: str | None) -> bool:
    """SendGrid's Signed Event Webhook: ECDSA P-256 / SHA-256 of `timestamp + raw body` checked
    against the base64 DER signature. Takes no clock: see `timestamp_is_fresh`."""
    key = load_public_key(public_key) if public_key else None
    if key is None or not signature or not timestamp or not (timestamp.isascii() and timestamp.isdigit()):
        return False
    try:
        der = base64.b64decode(signature, validate=True)
        key.verify(der, timestamp.encode("ascii") + payload, ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, ValueError, InvalidSignature):
        return False
    return True


def timestamp_is_fresh(timestamp: str | None, *, now: float, max_skew_s: float) -> bool:
    """The signed timestamp (epoch seconds) is within `max_skew_s` of `now`: an old signed batch
    replayed later is refused."""
    if not timestamp or not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
        return False
    return abs(now - int(timestamp)) <= max_skew_s
