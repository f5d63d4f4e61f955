"""Address and sender-ID formats per channel."""

from __future__ import annotations

import re

from core.errors import ValidationFailed

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
SMS_ALPHANUMERIC = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}$")
WHATSAPP_PHONE_NUMBER_ID = re.compile(r"^\d{5,32}$")
TELEGRAM_BOT = re.compile(r"^@?[A-Za-z][A-Za-z0-9_]{3,30}[Bb][Oo][Tt]$")

# Body size limits per channel, in characters (provider maxima).
BODY_LIMITS = {
    "sms": 1600,  # Twilio rejects longer bodies (error 21617)
    "whatsapp": 4096,  # Cloud API text body limit
    "telegram": 4096,  # sendMessage text limit
    "email": 100_000,
    "slack": 40_000,  # chat.postMessage truncates beyond this
}


def is_e164(value: str) -> bool:
    """True for +<country><number>, 7 to 15 digits."""
    return bool(E164.match(value))


def is_email(value: str) -> bool:
    """True for a plausible addr-spec with a dotted domain."""
    return len(value) <= 320 and bool(EMAIL.match(value))


def check_sender_value(channel: str, value: str) -> None:
    """Raise ValidationFailed if `value` is not a valid sender ID for `channel`."""
    ok = {
        "sms": lambda v: bool(SMS_ALPHANUMERIC.match(v)) or is_e164(v),
        "whatsapp": lambda v: bool(WHATSAPP_PHONE_NUMBER_ID.match(v)),
        "email": is_email,
        "telegram": lambda v: bool(TELEGRAM_BOT.match(v)),
        "slack": lambda v: 1 <= len(v.strip()) <= 80,
    }[channel](value)
    if not ok:
        hint = {
            "sms": "1-11 letters/digits (at least one letter) or an E.164 number",
            "whatsapp": "the WhatsApp phone-number id (digits)",
            "email": "an email address",
            "telegram": "the bot username (ends in 'bot')",
            "slack": "a display name of 1-80 characters",
        }[channel]
        raise ValidationFailed(
            f"invalid sender ID for {channel}: expected {hint}",
            {"field": "value", "channel": channel},
        )
