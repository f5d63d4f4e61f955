"""Fake Twilio, WhatsApp Cloud API, Telegram Bot API, Slack Web API and SendGrid servers, speaking
each provider's wire format on 127.0.0.1 (one uvicorn server, one path prefix per provider), plus
an aiosmtpd SMTP server. Recipients with magic addresses trigger each provider's errors."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import secrets
import socket
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlencode

import httpx
import uvicorn
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

TWILIO_SID = "AC" + "a" * 32
# Callbacks a fake provider has in flight at once (Twilio and Meta send webhooks in parallel).
CALLBACK_CONCURRENCY = 32
TWILIO_TOKEN = "twilio-test-token"
WHATSAPP_TOKEN = "wa-test-token"
WHATSAPP_SECRET = "wa-app-secret"
TELEGRAM_TOKEN = "123456:TEST-token"
SLACK_TOKEN = "xoxb-test-token"
SENDGRID_KEY = "SG.test-key.secret"
# The fake's Signed Event Webhook key pair; the public half as SendGrid shows it (base64 DER).
SENDGRID_SIGNING_KEY = ec.generate_private_key(ec.SECP256R1())
SENDGRID_PUBLIC_KEY = base64.b64encode(
    SENDGRID_SIGNING_KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
).decode()
# A From address on a domain without a verified Sender Identity (SendGrid answers 403).
SENDGRID_UNVERIFIED_DOMAIN = "unverified.example.com"

# Magic recipients, per scenario and provider.
SCENARIOS: dict[str, dict[str, str]] = {
    "accept": {
        "sms": "+14155550100",
        "whatsapp": "+14155550100",
        "telegram": "1001",
        "slack": "U0000001",
        "email": "ok@example.com",
    },
    "permanent": {
        "sms": "+15005550001",
        "whatsapp": "+15005550001",
        "telegram": "40000",
        "slack": "U_NOTFOUND",
        "email": "unknown@example.com",
    },
    "rate_limited": {
        "sms": "+15005550429",
        "whatsapp": "+15005550429",
        "telegram": "42900",
        "slack": "U_RATELIMIT",
        "email": "throttled@example.com",
    },
    "server_error": {
        "sms": "+15005550500",
        "whatsapp": "+15005550500",
        "telegram": "50000",
        "slack": "U_5XX",
        "email": "tempfail@example.com",
    },
    "timeout": {
        "sms": "+15005550408",
        "whatsapp": "+15005550408",
        "telegram": "40800",
        "slack": "U_SLOW",
        "email": "slow@example.com",
    },
}
SLOW_S = 1.5


def twilio_signature(url: str, params: dict[str, str], token: str) -> str:
    """X-Twilio-Signature: base64 HMAC-SHA1 over the URL and the sorted name+value pairs."""
    payload = url + "".join(f"{k}{params[k]}" for k in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), payload.encode(), hashlib.sha1).digest()).decode()


def hub_signature(body: bytes, secret: str) -> str:
    """X-Hub-Signature-256: sha256= + hex HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def sendgrid_signature(raw: bytes, timestamp: str, key: ec.EllipticCurvePrivateKey | None = None) -> str:
    """X-Twilio-Email-Event-Webhook-Signature: base64 DER ECDSA P-256/SHA-256 of timestamp + body."""
    signer = key or SENDGRID_SIGNING_KEY
    return base64.b64encode(signer.sign(timestamp.encode() + raw, ec.ECDSA(hashes.SHA256()))).decode()


def sendgrid_headers(
    raw: bytes, timestamp: int | None = None, key: ec.EllipticCurvePrivateKey | None = None
) -> dict[str, str]:
    """The headers SendGrid signs an event batch with (timestamp: now unless given)."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "Content-Type": "application/json",
        "X-Twilio-Email-Event-Webhook-Signature": sendgrid_signature(raw, stamp, key),
        "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
    }


def sendgrid_events_for(address: str) -> list[str]:
    """The events SendGrid reports for a recipient, by the local part of its address."""
    local = address.split("@", 1)[0].lower()
    if local.startswith("bounce"):
        return ["processed", "bounce"]
    if local.startswith("blocked"):
        return ["processed", "blocked"]
    if local.startswith("drop"):
        return ["dropped"]
    if local.startswith("spam"):
        return ["processed", "delivered", "spamreport"]
    if local.startswith("defer"):
        return ["processed", "deferred", "delivered"]
    return ["processed", "delivered"]


@dataclass
class Received:
    provider: str
    to: str
    body: str
    payload: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)  # when the fake accepted it (wall clock)


class FakeProviders:
    """State and routes of the fake HTTP providers."""

    def __init__(self, *, latency_s: float = 0.0, delivery_delay_s: float = 0.2) -> None:
        self.latency_s = latency_s
        self.delivery_delay_s = delivery_delay_s
        self.received: list[Received] = []
        self.twilio_messages: dict[str, dict[str, Any]] = {}
        self.whatsapp_webhook_url: str | None = None
        self.telegram_ids: defaultdict[str, itertools.count[int]] = defaultdict(lambda: itertools.count(1))
        self.callbacks_sent = 0
        self.lookups = 0
        # Every Twilio send request as it arrives (wall clock, To), accepted or not.
        self.arrivals: list[tuple[float, str]] = []
        # Recipients whose sends Twilio answers 503 for now (a provider outage).
        self.outage: set[str] = set()
        # The next this-many Twilio sends are accepted but never answered.
        self.lose_answers = 0
        # SendGrid: accepted sends by X-Message-Id; where to POST signed event batches (the API's
        # base URL) and what it answered; recipients answered 503; sends accepted, never answered.
        self.sendgrid_messages: dict[str, dict[str, Any]] = {}
        self.sendgrid_webhook_url: str | None = None
        self.sendgrid_webhook_answers: list[int] = []
        self.sendgrid_outage: set[str] = set()
        self.sendgrid_lose_answers = 0
        self._sendgrid_outbox: list[dict[str, Any]] = []
        self._sendgrid_flushing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._callback_session: Any = None
        self._callback_slots: asyncio.Semaphore | None = None
        self.app = Starlette(
            routes=[
                Route(
                    "/twilio/2010-04-01/Accounts/{sid}/Messages.json",
                    self.twilio_messages_route,
                    methods=["GET", "POST"],
                ),
                Route(
                    "/twilio/2010-04-01/Accounts/{sid}/Messages/{msid}.json", self.twilio_get, methods=["GET"]
                ),
                Route("/whatsapp/v21.0/{phone_id}/messages", self.whatsapp_send, methods=["POST"]),
                Route("/telegram/bot{token}/sendMessage", self.telegram_send, methods=["POST"]),
                Route("/slack/api/chat.postMessage", self.slack_post, methods=["POST"]),
                Route("/sendgrid/v3/mail/send", self.sendgrid_send, methods=["POST"]),
            ],
            lifespan=self._lifespan,
        )

    def count(self, provider: str, to: str | None = None) -> int:
        """Messages accepted by a provider (optionally for one recipient)."""
        return sum(1 for r in self.received if r.provider == provider and (to is None or r.to == to))

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Any) -> AsyncIterator[None]:
        yield
        if self._callback_session is not None:
            await self._callback_session.close()

    async def _post(
        self, url: str, *, headers: dict[str, str], data: Any = None, content: bytes | None = None
    ) -> int:
        """POST a callback as a provider's webhook sender does: one shared connection pool, a
        bounded number in flight (a client per callback cost the fake ~25 ms of CPU each and
        made it the bottleneck of any campaign with callbacks); the HTTP status, 0 if none."""
        import aiohttp

        if self._callback_session is None or self._callback_session.closed:
            self._callback_session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
            self._callback_slots = asyncio.Semaphore(CALLBACK_CONCURRENCY)
        assert self._callback_slots is not None
        async with self._callback_slots:
            try:
                async with self._callback_session.post(
                    url, data=data if content is None else content, headers=headers
                ) as response:
                    await response.read()
                    return response.status
            except (TimeoutError, aiohttp.ClientError, RuntimeError):  # RuntimeError: shutting down
                return 0

    def _background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _latency(self) -> None:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)

    # -- Twilio --

    def _twilio_authorized(self, request: Request) -> bool:
        expected = "Basic " + base64.b64encode(f"{TWILIO_SID}:{TWILIO_TOKEN}".encode()).decode()
        return request.headers.get("authorization") == expected and request.path_params["sid"] == TWILIO_SID

    async def twilio_messages_route(self, request: Request) -> Response:
        if request.method == "GET":
            return await self.twilio_list(request)
        return await self.twilio_create(request)

    async def twilio_list(self, request: Request) -> Response:
        """Messages.json?To=&From=&DateSent>=YYYY-MM-DD&PageSize=&Page=, newest first (the fake
        filters DateSent on the creation date: a queued message has no date_sent yet)."""
        self.lookups += 1
        if not self._twilio_authorized(request):
            return JSONResponse({"code": 20003, "message": "Authenticate", "status": 401}, status_code=401)
        query = request.query_params
        since = query.get("DateSent>=")
        page_size = int(query.get("PageSize", "50"))
        page = int(query.get("Page", "0"))
        found = [
            r
            for r in reversed(self.twilio_messages.values())
            if (not query.get("To") or r["to"] == query["To"])
            and (not query.get("From") or r["from"] == query["From"])
            and (not since or r["date_created_at"].strftime("%Y-%m-%d") >= since)
        ]
        chunk = found[page * page_size : (page + 1) * page_size]
        path = request.url.path.removeprefix("/twilio")
        next_uri = None
        if len(found) > (page + 1) * page_size:
            params = {k: v for k, v in query.items() if k != "Page"}
            next_uri = f"{path}?{urlencode({**params, 'Page': page + 1})}"
        return JSONResponse(
            {"messages": [self._twilio_public(r) for r in chunk], "next_page_uri": next_uri, "page": page}
        )

    @staticmethod
    def _twilio_public(resource: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in resource.items() if k not in ("created", "date_created_at")}

    async def twilio_create(self, request: Request) -> Response:
        arrived = time.time()
        await self._latency()
        if not self._twilio_authorized(request):
            return JSONResponse({"code": 20003, "message": "Authenticate", "status": 401}, status_code=401)
        form = dict(await request.form())
        to = str(form.get("To", ""))
        self.arrivals.append((arrived, to))
        if to in self.outage:
            return JSONResponse(
                {"code": 20500, "message": "Service Unavailable", "status": 503}, status_code=503
            )
        magic = {s: v["sms"] for s, v in SCENARIOS.items()}
        if to == magic["permanent"]:
            return JSONResponse(
                {
                    "code": 21211,
                    "message": f"The 'To' number {to} is not a valid phone number.",
                    "more_info": "https://www.twilio.com/docs/errors/21211",
                    "status": 400,
                },
                status_code=400,
            )
        if to == "+15005550004":
            return JSONResponse(
                {"code": 21610, "message": "Attempt to send to unsubscribed recipient", "status": 400},
                status_code=400,
            )
        if to == magic["rate_limited"]:
            return JSONResponse(
                {"code": 20429, "message": "Too Many Requests", "status": 429},
                status_code=429,
                headers={"Retry-After": "1"},
            )
        if to == magic["server_error"]:
            return JSONResponse(
                {"code": 20500, "message": "Internal Server Error", "status": 503}, status_code=503
            )
        if to == magic["timeout"]:
            await asyncio.sleep(SLOW_S)
        sid = "SM" + secrets.token_hex(16)
        now = datetime.now(UTC)
        resource = {
            "sid": sid,
            "account_sid": TWILIO_SID,
            "to": to,
            "from": form.get("From"),
            "body": form.get("Body"),
            "status": "queued",
            "error_code": None,
            "error_message": None,
            "num_segments": "1",
            "api_version": "2010-04-01",
            "date_created": format_datetime(now, usegmt=True),
            "created": time.monotonic(),
            "date_created_at": now,
        }
        self.twilio_messages[sid] = resource
        self.received.append(Received("sms", to, str(form.get("Body", "")), form))
        if form.get("StatusCallback"):
            self._background(self._twilio_callbacks(sid, str(form["StatusCallback"])))
        if self.lose_answers > 0:  # accepted, but the answer never arrives (a dropped connection)
            self.lose_answers -= 1
            await asyncio.sleep(3600)
        return JSONResponse(self._twilio_public(resource), status_code=201)

    def _twilio_final(self, resource: dict[str, Any]) -> None:
        if (
            resource["status"] in ("queued", "sent")
            and time.monotonic() - resource["created"] >= self.delivery_delay_s
        ):
            if resource["to"] == "+15005550030":  # unreachable handset
                resource.update(
                    status="undelivered", error_code=30003, error_message="Unreachable destination handset"
                )
            else:
                resource["status"] = "delivered"

    async def twilio_get(self, request: Request) -> Response:
        await self._latency()
        resource = self.twilio_messages.get(request.path_params["msid"])
        if resource is None:
            return JSONResponse({"code": 20404, "message": "not found", "status": 404}, status_code=404)
        self._twilio_final(resource)
        return JSONResponse(self._twilio_public(resource))

    async def _twilio_callbacks(self, sid: str, url: str) -> None:
        resource = self.twilio_messages[sid]
        await asyncio.sleep(self.delivery_delay_s)
        self._twilio_final(resource)
        for status in ("sent", resource["status"]):
            params = {
                "MessageSid": sid,
                "SmsSid": sid,
                "MessageStatus": status,
                "SmsStatus": status,
                "To": resource["to"],
                "From": str(resource["from"]),
                "AccountSid": TWILIO_SID,
                "ApiVersion": "2010-04-01",
            }
            if status == "undelivered":
                params["ErrorCode"] = str(resource["error_code"])
            headers = {"X-Twilio-Signature": twilio_signature(url, params, TWILIO_TOKEN)}
            await self._post(url, data=params, headers=headers)
            self.callbacks_sent += 1

    # -- WhatsApp Cloud API --

    async def whatsapp_send(self, request: Request) -> Response:
        await self._latency()
        if request.headers.get("authorization") != f"Bearer {WHATSAPP_TOKEN}":
            return JSONResponse(
                {
                    "error": {
                        "message": "Invalid OAuth access token.",
                        "type": "OAuthException",
                        "code": 190,
                        "fbtrace_id": "x",
                    }
                },
                status_code=401,
            )
        data = await request.json()
        to = "+" + str(data.get("to", "")).lstrip("+")
        magic = {s: v["whatsapp"] for s, v in SCENARIOS.items()}
        if to == magic["permanent"]:
            return self._graph_error(131009, "(#131009) Parameter value is not valid", 400)
        if to == magic["rate_limited"]:
            return self._graph_error(130429, "(#130429) Rate limit hit", 400)
        if to == magic["server_error"]:
            return Response("Service Unavailable", status_code=503)
        if to == magic["timeout"]:
            await asyncio.sleep(SLOW_S)
        body = data["text"]["body"] if data.get("type") == "text" else json.dumps(data.get("template"))
        wamid = "wamid." + base64.b64encode(secrets.token_bytes(24)).decode()
        self.received.append(Received("whatsapp", to, body, data))
        if self.whatsapp_webhook_url:
            self._background(self._whatsapp_statuses(wamid, to, request.path_params["phone_id"]))
        return JSONResponse(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": data.get("to"), "wa_id": to.lstrip("+")}],
                "messages": [{"id": wamid}],
            }
        )

    @staticmethod
    def _graph_error(code: int, message: str, status: int) -> JSONResponse:
        return JSONResponse(
            {
                "error": {
                    "message": message,
                    "type": "OAuthException",
                    "code": code,
                    "error_data": {"messaging_product": "whatsapp", "details": message},
                    "fbtrace_id": "AbC",
                }
            },
            status_code=status,
        )

    async def _whatsapp_statuses(self, wamid: str, to: str, phone_id: str) -> None:
        await asyncio.sleep(self.delivery_delay_s)
        statuses: list[dict[str, Any]] = [
            {
                "id": wamid,
                "status": "sent",
                "timestamp": str(int(time.time())),
                "recipient_id": to.lstrip("+"),
            }
        ]
        if to == "+15005550026":
            statuses.append(
                {
                    "id": wamid,
                    "status": "failed",
                    "timestamp": str(int(time.time())),
                    "recipient_id": to.lstrip("+"),
                    "errors": [{"code": 131026, "title": "Message undeliverable"}],
                }
            )
        else:
            statuses.append(
                {
                    "id": wamid,
                    "status": "delivered",
                    "timestamp": str(int(time.time())),
                    "recipient_id": to.lstrip("+"),
                }
            )
        for status in statuses:
            payload = {
                "object": "whatsapp_business_account",
                "entry": [
                    {
                        "id": "WABA",
                        "changes": [
                            {
                                "field": "messages",
                                "value": {
                                    "messaging_product": "whatsapp",
                                    "metadata": {"phone_number_id": phone_id},
                                    "statuses": [status],
                                },
                            }
                        ],
                    }
                ],
            }
            raw = json.dumps(payload).encode()
            await self._post(
                f"{self.whatsapp_webhook_url}/v1/webhooks/whatsapp",
                content=raw,
                headers={
                    "Content-Type": "application/json",
                    "X-Hub-Signature-256": hub_signature(raw, WHATSAPP_SECRET),
                },
            )
            self.callbacks_sent += 1

    # -- Telegram Bot API --

    async def telegram_send(self, request: Request) -> Response:
        await self._latency()
        if request.path_params["token"] != TELEGRAM_TOKEN:
            return JSONResponse(
                {"ok": False, "error_code": 401, "description": "Unauthorized"}, status_code=401
            )
        data = await request.json()
        chat = str(data.get("chat_id"))
        magic = {s: v["telegram"] for s, v in SCENARIOS.items()}
        if chat == magic["permanent"]:
            return JSONResponse(
                {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"},
                status_code=400,
            )
        if chat == "40300":
            return JSONResponse(
                {"ok": False, "error_code": 403, "description": "Forbidden: bot was blocked by the user"},
                status_code=403,
            )
        if chat == magic["rate_limited"]:
            return JSONResponse(
                {
                    "ok": False,
                    "error_code": 429,
                    "description": "Too Many Requests: retry after 1",
                    "parameters": {"retry_after": 1},
                },
                status_code=429,
            )
        if chat == magic["server_error"]:
            return Response("Bad Gateway", status_code=502)
        if chat == magic["timeout"]:
            await asyncio.sleep(SLOW_S)
        text = str(data.get("text", ""))
        if len(text) > 4096:
            return JSONResponse(
                {"ok": False, "error_code": 400, "description": "Bad Request: message is too long"},
                status_code=400,
            )
        self.received.append(Received("telegram", chat, text, data))
        message_id = next(self.telegram_ids[chat])
        return JSONResponse(
            {
                "ok": True,
                "result": {
                    "message_id": message_id,
                    "date": int(time.time()),
                    "chat": {"id": int(chat), "type": "private"},
                    "text": text,
                },
            }
        )

    # -- Slack Web API --

    async def slack_post(self, request: Request) -> Response:
        await self._latency()
        if request.headers.get("authorization") != f"Bearer {SLACK_TOKEN}":
            return JSONResponse({"ok": False, "error": "invalid_auth"})
        data = await request.json()
        channel = str(data.get("channel"))
        magic = {s: v["slack"] for s, v in SCENARIOS.items()}
        if channel == magic["permanent"]:
            return JSONResponse({"ok": False, "error": "channel_not_found"})
        if channel == magic["rate_limited"]:
            return JSONResponse(
                {"ok": False, "error": "ratelimited"}, status_code=429, headers={"Retry-After": "1"}
            )
        if channel == magic["server_error"]:
            return Response("upstream error", status_code=503)
        if channel == magic["timeout"]:
            await asyncio.sleep(SLOW_S)
        self.received.append(Received("slack", channel, str(data.get("text", "")), data))
        ts = f"{time.time():.6f}"
        return JSONResponse(
            {
                "ok": True,
                "channel": channel,
                "ts": ts,
                "message": {"text": data.get("text"), "type": "message", "ts": ts},
            }
        )

    # -- SendGrid v3 Mail Send --

    @staticmethod
    def _sendgrid_error(status: int, message: str, field: str | None = None, **headers: str) -> JSONResponse:
        return JSONResponse(
            {"errors": [{"message": message, "field": field, "help": None}]},
            status_code=status,
            headers=headers or None,
        )

    @classmethod
    def _sendgrid_invalid_recipients(cls, personalizations: Any) -> JSONResponse | None:
        """SendGrid's checks of `personalizations` (at least one, each with a `to`; at most 1,000
        recipients, each once), or None."""
        if not isinstance(personalizations, list) or not personalizations:
            return cls._sendgrid_error(
                400,
                "The personalizations field is required and must have at least one personalization.",
                "personalizations",
            )
        if len(personalizations) > 1000:
            return cls._sendgrid_error(
                400, "The personalizations field is limited to 1000.", "personalizations"
            )
        seen: set[str] = set()
        for i, p in enumerate(personalizations):
            to = p.get("to") if isinstance(p, dict) else None
            if not isinstance(to, list) or not to:
                return cls._sendgrid_error(
                    400,
                    "The to array is required for all personalization objects, and must have at least "
                    "one email object with a valid email address.",
                    f"personalizations.{i}.to",
                )
            for j, rcpt in enumerate(to):
                address = rcpt.get("email") if isinstance(rcpt, dict) else None
                if not isinstance(address, str) or "@" not in address:
                    return cls._sendgrid_error(
                        400, "Does not contain a valid address.", f"personalizations.{i}.to.{j}.email"
                    )
                if address.lower() in seen:
                    return cls._sendgrid_error(
                        400,
                        "Each email address in the personalization block should be unique between to, cc, "
                        f"and bcc. We found the first duplicate instance of [{address}] in the "
                        f"personalizations.{i}.to field.",
                        f"personalizations.{i}.to",
                    )
                seen.add(address.lower())
            args = p.get("custom_args", {})
            if not isinstance(args, dict) or not all(isinstance(v, str) for v in args.values()):
                return cls._sendgrid_error(
                    400, "Custom args values must be strings.", f"personalizations.{i}"
                )
        if len(seen) > 1000:
            return cls._sendgrid_error(
                400, "Too many recipients: at most 1000 per request.", "personalizations"
            )
        return None

    @classmethod
    def _sendgrid_invalid(cls, data: Any) -> JSONResponse | None:
        """SendGrid's request validation (the checks a campaign's mail can trip), or None."""
        if not isinstance(data, dict):
            return cls._sendgrid_error(400, "Bad Request")
        personalizations = data.get("personalizations")
        invalid = cls._sendgrid_invalid_recipients(personalizations)
        if invalid is not None:
            return invalid
        sender = data.get("from")
        if (
            not isinstance(sender, dict)
            or not isinstance(sender.get("email"), str)
            or "@" not in sender["email"]
        ):
            return cls._sendgrid_error(
                400,
                "The from object must be provided for every email send. It is an object that requires "
                "the email parameter, but may also contain a name parameter.",
                "from.email",
            )
        subject = data.get("subject")
        if not (isinstance(subject, str) and subject) and not all(
            isinstance(p.get("subject"), str) and p["subject"] for p in personalizations
        ):
            return cls._sendgrid_error(
                400,
                "The subject is required. You can get around this requirement if you use a template with "
                "a subject defined or if every personalization has a subject defined.",
                "subject",
            )
        content = data.get("content")
        if not isinstance(content, list) or not content:
            return cls._sendgrid_error(
                400, "Unless a valid template_id is provided, the content parameter is required.", "content"
            )
        for i, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str) or not part["type"]:
                return cls._sendgrid_error(400, "The content type is required.", f"content.{i}.type")
            if not isinstance(part.get("value"), str) or not part["value"]:
                return cls._sendgrid_error(
                    400,
                    "The content value must be a string at least one character in length.",
                    f"content.{i}.value",
                )
        types = [part["type"] for part in content]
        leading = [t for t in ("text/plain", "text/html") if t in types]
        if types[: len(leading)] != leading:
            return cls._sendgrid_error(
                400,
                "If present, text/plain content must be first, followed by text/html, followed by any "
                "other content.",
                "content",
            )
        headers = data.get("headers", {})
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            return cls._sendgrid_error(400, "Invalid type. Expected: object, given: other.", "headers")
        return None

    async def sendgrid_send(self, request: Request) -> Response:
        await self._latency()
        if request.headers.get("authorization") != f"Bearer {SENDGRID_KEY}":
            return self._sendgrid_error(
                401, "The provided authorization grant is invalid, expired, or revoked"
            )
        try:
            data = json.loads(await request.body())
        except ValueError:
            return self._sendgrid_error(400, "Bad Request")
        invalid = self._sendgrid_invalid(data)
        if invalid is not None:
            return invalid
        if str(data["from"]["email"]).lower().endswith("@" + SENDGRID_UNVERIFIED_DOMAIN):
            return self._sendgrid_error(
                403,
                "The from address does not match a verified Sender Identity. Mail cannot be sent until "
                "this error is resolved.",
                "from",
            )
        to = str(data["personalizations"][0]["to"][0]["email"])
        magic = {s: v["email"] for s, v in SCENARIOS.items()}
        if to == magic["permanent"]:
            return self._sendgrid_error(
                400, "Does not contain a valid address.", "personalizations.0.to.0.email"
            )
        if to == magic["rate_limited"]:
            return self._sendgrid_error(
                429,
                "too many requests",
                **{
                    "X-RateLimit-Limit": "600",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": str(int(time.time()) + 2),
                },
            )
        if to == magic["server_error"] or to in self.sendgrid_outage:
            return self._sendgrid_error(503, "Service Unavailable")
        if to == magic["timeout"]:
            await asyncio.sleep(SLOW_S)
        xid = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")
        text = next((p["value"] for p in data["content"] if p["type"] == "text/plain"), "")
        self.sendgrid_messages[xid] = {
            "data": data,
            "headers": {k: v for k, v in request.headers.items() if k != "authorization"},
            "at": time.time(),
        }
        for p in data["personalizations"]:
            for rcpt in p["to"]:
                self.received.append(Received("sendgrid", str(rcpt["email"]), text, data))
        if self.sendgrid_webhook_url:
            self._background(self._sendgrid_report(xid, data))
        if self.sendgrid_lose_answers > 0:  # accepted, but the answer never arrives
            self.sendgrid_lose_answers -= 1
            await asyncio.sleep(3600)
        return Response(
            status_code=202,
            headers={"X-Message-Id": xid, "X-RateLimit-Limit": "600", "X-RateLimit-Remaining": "599"},
        )

    @staticmethod
    def sendgrid_event(xid: str, kind: str, address: str, args: dict[str, str]) -> dict[str, Any]:
        """One Event Webhook event as SendGrid posts it, custom args merged in as top-level fields."""
        event: dict[str, Any] = {
            **args,
            "email": address,
            "timestamp": int(time.time()),
            "smtp-id": f"<{xid}@ismtpd0039p1iad1.sendgrid.net>",
            "event": kind,
            "sg_event_id": base64.urlsafe_b64encode(secrets.token_bytes(24)).decode(),
            "sg_message_id": f"{xid}.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0",
        }
        if kind == "delivered":
            event.update(response="250 2.0.0 OK", ip="168.1.1.1", tls=1)
        elif kind == "deferred":
            event.update(response="451 4.7.1 Try again later", attempt="1")
        elif kind == "bounce":
            event.update(
                type="bounce",
                status="5.1.1",
                reason="550 5.1.1 The email account that you tried to reach does not exist.",
                bounce_classification="Invalid Address",
            )
        elif kind == "blocked":
            event.update(
                event="bounce",
                type="blocked",
                status="4.7.1",
                reason="421 4.7.1 Message temporarily deferred due to reputation",
                bounce_classification="Reputation",
            )
        elif kind == "dropped":
            event.update(reason="Bounced Address", status="5.0.0")
        return event

    async def _sendgrid_report(self, xid: str, data: dict[str, Any]) -> None:
        """The events of one send, queued for the next batch after the delivery delay."""
        top = data.get("custom_args") or {}
        processed, later = [], []
        for p in data["personalizations"]:
            args = {**top, **(p.get("custom_args") or {})}
            for rcpt in p["to"]:
                for kind in sendgrid_events_for(str(rcpt["email"])):
                    event = self.sendgrid_event(xid, kind, str(rcpt["email"]), args)
                    (processed if kind == "processed" else later).append(event)
        self._sendgrid_queue(processed)
        await asyncio.sleep(self.delivery_delay_s)
        self._sendgrid_queue(later)

    def _sendgrid_queue(self, events: list[dict[str, Any]]) -> None:
        self._sendgrid_outbox.extend(events)
        if events and not self._sendgrid_flushing:
            self._sendgrid_flushing = True
            self._background(self._sendgrid_flush())

    async def _sendgrid_flush(self) -> None:
        await asyncio.sleep(0.05)  # SendGrid batches the events of many messages in one POST
        batch, self._sendgrid_outbox = self._sendgrid_outbox, []
        self._sendgrid_flushing = False
        await self.post_sendgrid_events(batch)

    async def post_sendgrid_events(self, events: list[dict[str, Any]], timestamp: int | None = None) -> int:
        """POST one signed batch to the webhook URL (retried on 5xx and connection errors, as
        SendGrid does); the last HTTP status, 0 if never answered."""
        assert self.sendgrid_webhook_url, "set sendgrid_webhook_url first"
        raw = (json.dumps(events, separators=(",", ":")) + "\r\n").encode()
        status = 0
        for attempt in range(3):
            headers = sendgrid_headers(raw, timestamp)
            try:
                async with httpx.AsyncClient(timeout=10) as client:
                    response = await client.post(
                        f"{self.sendgrid_webhook_url}/v1/webhooks/sendgrid", content=raw, headers=headers
                    )
                status = response.status_code
            except httpx.TransportError:
                status = 0
            if 0 < status < 500:
                break
            await asyncio.sleep(0.2 * (attempt + 1))
        self.sendgrid_webhook_answers.append(status)
        self.callbacks_sent += 1
        return status


class ServerThread:
    """Runs an ASGI app with uvicorn on 127.0.0.1:<free port> in a background thread."""

    def __init__(self, app: Any) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


# -- SMTP (aiosmtpd) --


class SmtpHandler:
    """Scripted replies per recipient; accepted messages are kept."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.sessions = 0

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.sessions += 1
        session.host_name = hostname
        return responses

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        magic = {s: v["email"] for s, v in SCENARIOS.items()}
        if address == magic["permanent"]:
            return "550 5.1.1 <unknown@example.com>: Recipient address rejected: User unknown"
        if address == magic["rate_limited"]:
            return "451 4.7.1 Rate limited, try again later"
        if address == magic["server_error"]:
            return "452 4.3.1 Insufficient system storage"
        if address == magic["timeout"]:
            await asyncio.sleep(SLOW_S)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 2.0.0 Ok: queued"

    def count(self, to: str | None = None) -> int:
        return sum(1 for _f, tos, _c in self.messages if to is None or to in tos)


class SmtpServer:
    """aiosmtpd on 127.0.0.1:<free port>."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.handler = SmtpHandler()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


def main() -> None:
    """Run the fake HTTP providers standalone: python -m tests.providers.fake_server PORT [LATENCY_MS]."""
    import sys

    port = int(sys.argv[1])
    latency = float(sys.argv[2]) / 1000 if len(sys.argv) > 2 else 0.0
    fakes = FakeProviders(latency_s=latency)
    uvicorn.run(fakes.app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
