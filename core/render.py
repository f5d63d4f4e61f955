"""Personalization placeholders and SMS segment counting."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from core.errors import ValidationFailed

PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
SIMPLE_FIELDS = frozenset({"name", "first_name", "phone", "email"})
# Per-channel placeholders: each email's one-click unsubscribe link (filled in at send time).
UNSUBSCRIBE_URL = "unsubscribe_url"
CHANNEL_FIELDS = {"email": frozenset({UNSUBSCRIBE_URL})}
UNSUBSCRIBE_PLACEHOLDER = "{{" + UNSUBSCRIBE_URL + "}}"
ATTRIBUTE_KEY = re.compile(r"attributes\.([A-Za-z0-9_\-]+)")  # fullmatch: `$` allows a trailing "\n"

# GSM 03.38 basic set; the extension set costs two septets per character.
GSM7_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENDED = set("^{}\\[~]|€\f")


def placeholders(text: str) -> list[str]:
    """Every placeholder name used in `text`, in order."""
    return [m.group(1) for m in PLACEHOLDER.finditer(text)]


def check_placeholders(text: str, channel: str | None = None) -> None:
    """Raise ValidationFailed on a placeholder this service cannot fill on `channel`."""
    extra = CHANNEL_FIELDS.get(channel or "", frozenset())
    known = SIMPLE_FIELDS | extra
    unknown = [name for name in placeholders(text) if name not in known and not ATTRIBUTE_KEY.fullmatch(name)]
    if unknown:
        hint = "" if unknown[0] != UNSUBSCRIBE_URL else " (unsubscribe_url is for email only)"
        raise ValidationFailed(
            f"unknown placeholder {{{{{unknown[0]}}}}}{hint}",
            {"unknown_placeholders": unknown, "allowed": [*sorted(known), "attributes.KEY"]},
        )


def contact_values(
    name: str, phone: str | None, email: str | None, attributes: Mapping[str, Any] | None
) -> dict[str, str]:
    """The values placeholders resolve to for one contact."""
    values = {
        "name": name or "",
        "first_name": (name or "").split(" ", 1)[0] if name else "",
        "phone": phone or "",
        "email": email or "",
    }
    for key, value in (attributes or {}).items():
        values[f"attributes.{key}"] = "" if value is None else str(value)
    return values


def render(text: str, values: Mapping[str, str]) -> str:
    """Replace placeholders with the contact's values (missing attributes become empty)."""
    if "{{" not in text:
        return text
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), ""), text)


def template_texts(template: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """The text parameters of a WhatsApp template (the only parts that take placeholders)."""
    components = template.get("components") or []
    for component in components if isinstance(components, list) else []:
        parameters = component.get("parameters") if isinstance(component, dict) else None
        for parameter in parameters if isinstance(parameters, list) else []:
            if isinstance(parameter, dict) and isinstance(parameter.get("text"), str):
                yield parameter


def render_template(template: Mapping[str, Any], values: Mapping[str, str]) -> dict[str, Any]:
    """A copy of the template with its text parameters personalized."""
    rendered = copy.deepcopy(dict(template))
    for parameter in template_texts(rendered):
        parameter["text"] = render(parameter["text"], values)
    return rendered


def is_gsm7(text: str) -> bool:
    """True if every character fits the GSM-7 alphabet (basic or extension)."""
    return all(ch in GSM7_BASIC or ch in GSM7_EXTENDED for ch in text)


def _parts(costs: Iterable[int], single: int, part: int) -> int:
    """Segments for characters of these costs: one if all fit in `single`, otherwise parts of
    at most `part` units, a character never split across two (handsets cannot join half an
    escape sequence or half a surrogate pair, so the encoder moves it to the next part)."""
    costs = list(costs)
    if sum(costs) <= single:
        return 1
    segments, used = 1, 0
    for cost in costs:
        if used + cost > part:
            segments, used = segments + 1, 0
        used += cost
    return segments


def sms_segments(text: str) -> int:
    """Segments an SMS body costs: GSM-7 160/153 septets (an extension character is an escape
    pair of two), otherwise UCS-2 70/67 UTF-16 units (an astral character is two)."""
    if not text:
        return 1
    if is_gsm7(text):
        return _parts((2 if ch in GSM7_EXTENDED else 1 for ch in text), 160, 153)
    return _parts((2 if ord(ch) > 0xFFFF else 1 for ch in text), 70, 67)


def message_cost(channel: str, text: str | None) -> int:
    """Credits one message costs: one, except SMS which costs one per segment."""
    if channel == "sms":
        return sms_segments(text or "")
    return 1
