from __future__ import annotations

import pytest

from core.errors import ValidationFailed
from core.render import check_placeholders, contact_values, message_cost, render, sms_segments


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        ("", 1),
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("€" * 80, 1),  # extension characters cost two septets: 160 septets
        ("€" * 81, 2),
        ("é" * 160, 1),  # é is in the GSM-7 basic set
        ("ж" * 70, 1),  # Cyrillic forces UCS-2
        ("ж" * 71, 2),
        ("ж" * 134, 2),
        ("ж" * 135, 3),
        ("😀" * 35, 1),  # astral characters are two UTF-16 units
        ("😀" * 36, 2),
    ],
)
def test_sms_segments(text: str, segments: int) -> None:
    assert sms_segments(text) == segments


def test_cost_is_one_per_message_except_sms() -> None:
    assert message_cost("whatsapp", "a" * 1000) == 1
    assert message_cost("sms", "a" * 1000) == 7


def test_render_fills_every_placeholder() -> None:
    values = contact_values("Ada Lovelace", "+14155550100", "ada@example.com", {"code": "X1"})
    text = "{{first_name}}/{{ name }}/{{phone}}/{{email}}/{{attributes.code}}/{{attributes.none}}"
    assert render(text, values) == "Ada/Ada Lovelace/+14155550100/ada@example.com/X1/"


def test_unknown_placeholder_is_rejected() -> None:
    check_placeholders("Hi {{first_name}} {{attributes.code}}")
    with pytest.raises(ValidationFailed) as info:
        check_placeholders("Hi {{surname}}")
    assert info.value.details["unknown_placeholders"] == ["surname"]
