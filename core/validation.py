"""Address and sender-ID formats per channel.

Patterns are matched with `fullmatch`: `$` also matches before a trailing newline, which let
"+14155550100\n" in as a second contact and an address with a line break into MIME headers."""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from core.errors import InvalidRequest, ValidationFailed

E164 = re.compile(r"\+[1-9][0-9]{6,14}")
EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
SMS_ALPHANUMERIC = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}")
WHATSAPP_PHONE_NUMBER_ID = re.compile(r"[0-9]{5,32}")
TELEGRAM_BOT = re.compile(r"@?[A-Za-z][A-Za-z0-9_]{3,30}[Bb][Oo][Tt]")

# Body size limits per channel, in characters (provider maxima).
BODY_LIMITS = {
    "sms": 1600,  # Twilio rejects longer bodies (error 21617)
    "whatsapp": 4096,  # Cloud API text body limit
    "telegram": 4096,  # sendMessage text limit
    "email": 65_536,  # mail clients clip long bodies (Gmail at ~100 KB); no field takes 100,000
    "slack": 40_000,  # chat.postMessage truncates beyond this
}


def is_e164(value: str) -> bool:
    """True for +<country><number>, 7 to 15 digits."""
    return bool(E164.fullmatch(value))


def is_email(value: str) -> bool:
    """True for a plausible addr-spec with a dotted domain."""
    return len(value) <= 320 and bool(EMAIL.fullmatch(value))


def check_sender_value(channel: str, value: str) -> None:
    """Raise ValidationFailed if `value` is not a valid sender ID for `channel`."""
    ok = {
        "sms": lambda v: bool(SMS_ALPHANUMERIC.fullmatch(v)) or is_e164(v),
        "whatsapp": lambda v: bool(WHATSAPP_PHONE_NUMBER_ID.fullmatch(v)),
        "email": is_email,
        "telegram": lambda v: bool(TELEGRAM_BOT.fullmatch(v)),
        "slack": lambda v: 1 <= len(v.strip()) <= 80 and v.isprintable(),
    }[channel](value)
    if not ok:
        hint = {
            "sms": "1-11 letters/digits (at least one letter) or an E.164 number",
            "whatsapp": "the WhatsApp phone-number id (digits)",
            "email": "an email address",
            "telegram": "the bot username (ends in 'bot')",
            "slack": "a display name of 1-80 printable characters",
        }[channel]
        raise ValidationFailed(
            f"invalid sender ID for {channel}: expected {hint}",
            {"field": "value", "channel": channel},
        )


def schema_error(exc: ValidationError) -> InvalidRequest:
    """A pydantic validation error as the API's 400: the first field at fault in the message,
    every one in the details."""
    errors: list[dict[str, Any]] = [
        {"field": ".".join(str(p) for p in e["loc"]) or None, "message": e["msg"]} for e in exc.errors()
    ]
    first = errors[0]
    message = f"{first['field']}: {first['message']}" if first["field"] else str(first["message"])
    return InvalidRequest(message, {"errors": errors})
