"""Provider webhooks: no API key, signature-verified (bad signature → 403), idempotent."""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from api.deps import in_db, state
from channels import email_sendgrid, sms_twilio, whatsapp_cloud
from channels.base import StatusUpdate
from core import email_events, optout, tracking
from core.errors import Forbidden, InvalidRequest

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


async def _twilio_params(request: Request) -> dict[str, list[str]]:
    """The form fields, after checking X-Twilio-Signature over the URL Twilio called."""
    settings = state(request).settings
    form = await request.form()
    params: dict[str, list[str]] = {}
    for name, value in form.multi_items():
        params.setdefault(name, []).append(str(value))
    url = str(request.url)
    if settings.public_url:
        url = settings.public_url.rstrip("/") + request.url.path
        if request.url.query:
            url += "?" + request.url.query
    token = settings.twilio.auth_token.get_secret_value()
    if not sms_twilio.verify_signature(url, params, token, request.headers.get("x-twilio-signature")):
        raise Forbidden("invalid X-Twilio-Signature")
    return params


def _json(raw: bytes) -> Any:
    """A webhook body parsed as JSON (400 invalid_request when it is not)."""
    try:
        return json.loads(raw)
    except ValueError:  # also UnicodeDecodeError
        raise InvalidRequest("malformed JSON") from None
    except RecursionError:  # not a ValueError: deeply nested arrays or objects
        raise InvalidRequest("malformed JSON: nested too deeply") from None


async def _apply(request: Request, updates: list[StatusUpdate]) -> int:
    """Apply status updates; those that change nothing (a provider echoing what we know) are
    sorted out on a read-only connection first, so they never queue for the writer."""
    todo = await in_db(request, lambda s: tracking.changing(s, updates), write=False)
    if not todo:
        return 0
    return await in_db(request, lambda s: tracking.apply_updates(s, todo, keep_unmatched=True))


@router.post("/twilio/status")
async def twilio_status(request: Request) -> Response:
    """Twilio status callback → message status (never backwards; redeliveries change nothing)."""
    params = await _twilio_params(request)
    sid = (params.get("MessageSid") or params.get("SmsSid") or [""])[0]
    raw_status = (params.get("MessageStatus") or params.get("SmsStatus") or [""])[0]
    status = sms_twilio.map_status(raw_status)
    if sid and status:
        code = (params.get("ErrorCode") or [""])[0]
        update = StatusUpdate(
            sid,
            status,
            error_code=code or None,
            error_message=f"Twilio {raw_status}" + (f" ({code})" if code else "")
            if status in ("undelivered", "failed")
            else None,
        )
        await _apply(request, [update])
    return Response(status_code=204)


@router.post("/twilio/inbound")
async def twilio_inbound(request: Request) -> Response:
    """Inbound SMS: STOP (and the usual keywords) opts the phone out; START opts it back in."""
    params = await _twilio_params(request)
    sender = (params.get("From") or [""])[0]
    to = (params.get("To") or [""])[0]
    body = (params.get("Body") or [""])[0]
    await in_db(request, lambda s: optout.handle_inbound_sms(s, from_phone=sender, to=to, body=body))
    return Response(EMPTY_TWIML, media_type="text/xml")


@router.get("/whatsapp")
async def whatsapp_verify(request: Request) -> Response:
    """Meta's subscription handshake: echo hub.challenge when the verify token matches."""
    q = request.query_params
    expected = state(request).settings.whatsapp_cloud.verify_token.get_secret_value()
    if q.get("hub.mode") != "subscribe" or not expected or q.get("hub.verify_token") != expected:
        raise Forbidden("verify token mismatch")
    return PlainTextResponse(q.get("hub.challenge", ""))


@router.post("/whatsapp")
async def whatsapp_events(request: Request) -> Response:
    """Status events (sent, delivered, read, failed) for messages we sent."""
    raw = await request.body()
    secret = state(request).settings.whatsapp_cloud.app_secret.get_secret_value()
    if not whatsapp_cloud.verify_signature(raw, secret, request.headers.get("x-hub-signature-256")):
        raise Forbidden("invalid X-Hub-Signature-256")
    payload = _json(raw)
    updates = whatsapp_cloud.updates_from_webhook(payload if isinstance(payload, dict) else {})
    changed = 0
    if updates:
        changed = await _apply(request, updates)
    return JSONResponse({"received": len(updates), "applied": changed})


@router.post("/sendgrid")
async def sendgrid_events(request: Request) -> Response:
    """Event batches (delivered, bounce, dropped, spamreport…) for emails we sent through SendGrid."""
    raw = await request.body()
    config = state(request).settings.sendgrid
    if not config.webhook_public_key:
        raise Forbidden("the SendGrid webhook public key is not configured")
    timestamp = request.headers.get(email_sendgrid.TIMESTAMP_HEADER)
    signature = request.headers.get(email_sendgrid.SIGNATURE_HEADER)
    if not email_sendgrid.verify_signature(config.webhook_public_key, raw, signature, timestamp):
        raise Forbidden(f"invalid {email_sendgrid.SIGNATURE_HEADER}")
    # Checked after the signature, so that only a genuine but old batch is called a replay.
    skew = config.webhook_max_skew_s
    if skew is not None and not email_sendgrid.timestamp_is_fresh(
        timestamp, now=time.time(), max_skew_s=skew
    ):
        raise Forbidden(f"stale {email_sendgrid.TIMESTAMP_HEADER}: replayed or clock skew")
    payload = _json(raw)
    if not isinstance(payload, list):
        raise InvalidRequest("expected a JSON array of events")
    events = email_events.read_events(payload)
    result = email_events.Applied(0, 0)
    if events:
        result = await in_db(request, lambda s: email_events.apply_events(s, events))
    return JSONResponse({"received": len(payload), "applied": result.applied, "opted_out": result.opted_out})
