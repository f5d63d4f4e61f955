"""SMS through the Twilio Messages API (2010-04-01).

Send: POST {base}/2010-04-01/Accounts/{AccountSid}/Messages.json, form fields To, From, Body,
StatusCallback; HTTP basic auth; 201 with the message resource (`sid` is our provider id).
Status: GET …/Messages/{sid}.json, and status callbacks (webhook). Errors come back as
{"code", "message", "more_info", "status"}. Finding a message whose answer was lost:
GET …/Messages.json?To=…&From=…&DateSent>=YYYY-MM-DD (newest first, `next_page_uri` pages),
matched on the body and on `date_created`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import httpx
from pydantic import BaseModel, SecretStr

from channels.base import (
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


# Synchronous error codes about our account or sender, not the recipient (21408 region
# permissions and 21608 trial-unverified numbers are per recipient, so they stay permanent).
class TwilioSettings(BaseModel):
    account_sid: str = ""
    auth_token: SecretStr = SecretStr("")
    base_url: str = "https://api.twilio.com"


CONFIG_CODES = frozenset({20003, 20005, 21212, 21603, 21606, 21659})
OPT_OUT_CODES = frozenset({21610})
RATE_LIMIT_CODES = frozenset({20429, 21611})  # concurrency limit; queue full
# A message created through the API is listed by Messages.json within moments; waiting this long
# after a lost answer before concluding "not sent" leaves a wide margin.
SENT_LOOKUP_DELAY_S = 10.0
LOOKUP_PAGES = 5
# date_created comes from Twilio's clock, `since` from ours.
CLOCK_SKEW = timedelta(seconds=60)

FINAL = {
    "delivered": "delivered",
    "read": "delivered",
    "undelivered": "undelivered",
    "failed": "failed",
    "canceled": "failed",
}


def map_status(twilio_status: str) -> str | None:
    """Twilio's status → ours when it is final (or `sent`), None while still in Twilio's queue."""
    if twilio_status in FINAL:
        return FINAL[twilio_status]
    if twilio_status == "sent":
        return "sent"
    return None


class TwilioChannel(HttpAdapter):
    """Twilio SMS adapter."""

    name = "sms"
    # Twilio queues beyond a sender's MPS (1/s long code, 3 toll-free, 10 international, 30 short
    # code) rather than rejecting; 10/s keeps queues short for most senders. Tune per account.
    default_rate_per_second: float | None = 10.0
    default_concurrency = 10
    supports_status_lookup = True
    sent_lookup_delay_s: float | None = SENT_LOOKUP_DELAY_S

    def __init__(
        self,
        settings: TwilioSettings,
        *,
        public_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 10.0,
    ) -> None:
        if not settings.account_sid or not settings.auth_token.get_secret_value():
            raise ProviderConfigError("Twilio needs CAMPAIGNS_TWILIO__ACCOUNT_SID and __AUTH_TOKEN")
        self.settings = settings
        self.public_url = public_url
        # With a public URL Twilio posts every status change to our webhook: lookups are then
        # only for messages whose callback is overdue (core/tracking.py).
        self.receipts_pushed = bool(public_url)
        super().__init__(
            settings.base_url,
            transport=transport,
            timeout=timeout,
            auth=(settings.account_sid, settings.auth_token.get_secret_value()),
            headers={"Accept": "application/json"},
        )
        self.path = f"/2010-04-01/Accounts/{settings.account_sid}/Messages"

    async def send(self, message: OutboundMessage) -> SendResult:
        """POST Messages.json; 201 → accepted (`sent`, receipt to follow)."""
        form = {"To": message.to, "From": message.sender, "Body": message.body or ""}
        if self.public_url:
            form["StatusCallback"] = f"{self.public_url.rstrip('/')}/v1/webhooks/twilio/status"
        response = await self.call("POST", f"{self.path}.json", data=form)
        if response.status_code in (200, 201):
            body = json_or_empty(response)
            sid = body.get("sid")
            if not sid:
                raise TransientSendError("Twilio accepted the request but returned no sid", code="no_sid")
            status = map_status(str(body.get("status", "")))
            if status == "failed":
                raise PermanentSendError(
                    str(body.get("error_message") or "failed"), code=str(body.get("error_code") or "failed")
                )
            return SendResult(
                provider_message_id=sid, status="delivered" if status == "delivered" else "sent"
            )
        self._raise(response)
        raise AssertionError("unreachable")

    def _raise(self, response: httpx.Response) -> None:
        body = json_or_empty(response)
        code = error_code(body.get("code"))
        text = str(body.get("message") or f"HTTP {response.status_code}")[:500]
        if code in RATE_LIMIT_CODES:
            raise TransientSendError(text, code=str(code), retry_after=retry_after_seconds(response))
        raise_for_transient_status(response)
        if response.status_code in (401, 403) or code in CONFIG_CODES:
            raise ProviderConfigError(f"Twilio refused the request ({code}): {text}")
        if code in OPT_OUT_CODES:
            raise PermanentSendError(text, code=str(code), opt_out=True)
        raise PermanentSendError(text, code=str(code or response.status_code))

    async def fetch_status(self, provider_message_id: str, sent_at: datetime | None) -> StatusUpdate | None:
        """GET the message; a final status (or None while Twilio still works on it)."""
        try:
            response = await self.call("GET", f"{self.path}/{provider_message_id}.json")
        except TransientSendError:
            return None
        if response.status_code != 200:
            return None
        body = json_or_empty(response)
        status = map_status(str(body.get("status", "")))
        if status in (None, "sent"):
            return None
        code = body.get("error_code")
        return StatusUpdate(
            provider_message_id,
            status,
            error_code=str(code) if code else None,
            error_message=body.get("error_message"),
        )

    async def find_sent(self, message: OutboundMessage, since: datetime) -> list[SendResult]:
        """List the messages to `message.to` from its sender since that day and keep those with
        the same body created after `since` (newest first)."""
        params = {
            "To": message.to,
            "From": message.sender,
            "DateSent>=": since.strftime("%Y-%m-%d"),
            "PageSize": "50",
        }
        path = f"{self.path}.json"
        found: list[SendResult] = []
        for _page in range(LOOKUP_PAGES):
            response = await self.call("GET", path, params=params)
            raise_for_transient_status(response)
            if response.status_code != 200:
                self._raise(response)
            body = json_or_empty(response)
            for item in body.get("messages") or []:
                if isinstance(item, dict) and _matches(item, message, since):
                    status = map_status(str(item.get("status", "")))
                    found.append(
                        SendResult(str(item["sid"]), "delivered" if status == "delivered" else "sent")
                    )
            next_uri = body.get("next_page_uri")
            if not next_uri or not isinstance(next_uri, str):
                break
            path, _, query = next_uri.partition("?")
            params = dict(httpx.QueryParams(query))
        return found


def _matches(item: dict[str, object], message: OutboundMessage, since: datetime) -> bool:
    if not item.get("sid") or item.get("body") != (message.body or ""):
        return False
    if item.get("to") not in (None, message.to):
        return False
    created = item.get("date_created")
    if not isinstance(created, str):
        return True
    try:
        when = parsedate_to_datetime(created).astimezone(UTC)
    except (TypeError, ValueError):
        return True
    aware = since if since.tzinfo is not None else since.replace(tzinfo=UTC)
    return when >= aware - CLOCK_SKEW


def signature(url: str, params: dict[str, list[str]], auth_token: str) -> str:
    """X-Twilio-Signature: base64(HMAC-SHA1(token, url + each name+value, names sorted))."""
    import base64
    import hashlib
    import hmac

    payload = url + "".join(
        f"{name}{value}" for name in sorted(params) for value in sorted(set(params[name]))
    )
    return base64.b64encode(hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()).decode()


def verify_signature(url: str, params: dict[str, list[str]], auth_token: str, header: str | None) -> bool:
    """Constant-time check of a callback's signature (also without a default port, like the SDK)."""
    import hmac
    from urllib.parse import urlsplit, urlunsplit

    if not header or not auth_token:
        return False
    candidates = {url}
    parts = urlsplit(url)
    if parts.port in (80, 443):
        candidates.add(urlunsplit(parts._replace(netloc=parts.hostname or "")))
    # Bytes: compare_digest refuses str with non-ASCII characters (a header can carry any).
    given = header.encode("utf-8", "replace")
    return any(hmac.compare_digest(signature(u, params, auth_token).encode(), given) for u in candidates)
