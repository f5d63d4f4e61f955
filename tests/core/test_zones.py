"""Recipients' time zones and send windows (SPEC §10 quiet hours)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from core.zones import country_zone, is_open, is_zone, next_open, phone_zone, recipient_zone

WINDOW = {"start": "09:00", "end": "20:00"}


def test_known_zone_names() -> None:
    assert is_zone("Europe/Paris") and is_zone("UTC") and is_zone("America/New_York")
    assert not is_zone("Mars/Olympus") and not is_zone("") and not is_zone("europe/paris")


@pytest.mark.parametrize(
    ("phone", "zone"),
    [
        ("+33612345678", "Europe/Paris"),  # France: one zone
        ("+4915112345678", "Europe/Berlin"),
        ("+8613800138000", "Asia/Shanghai"),
        ("+447700900123", "Europe/London"),
        ("+393331234567", "Europe/Rome"),
        ("+17875551234", "America/Puerto_Rico"),  # +1, but its own country with one zone
        ("+18765551234", "America/Jamaica"),
        ("+14155550100", None),  # the United States have several
        ("+61412345678", None),  # Australia too
        ("+79161234567", None),
        ("not a number", None),
        (None, None),
    ],
)
def test_a_phone_gives_its_country_zone_only_when_the_country_has_one(
    phone: str | None, zone: str | None
) -> None:
    assert phone_zone(phone) == zone


def test_the_contact_zone_wins_then_the_phone_then_the_default() -> None:
    assert recipient_zone("Asia/Tokyo", "+33612345678", "UTC") == "Asia/Tokyo"
    assert recipient_zone(None, "+33612345678", "UTC") == "Europe/Paris"
    assert recipient_zone(None, "+14155550100", "America/Chicago") == "America/Chicago"
    assert recipient_zone("Not/AZone", "+14155550100", "UTC") == "UTC"
    assert country_zone("FR") == "Europe/Paris"
    assert country_zone("DE") == "Europe/Berlin"  # Busingen keeps Berlin's clock
    assert country_zone("US") is None and country_zone("XX") is None


def test_a_zone_the_machine_does_not_know_reads_as_utc() -> None:
    """A message's zone fixed where the time zone data was newer must not fail the campaign."""
    now = datetime(2026, 12, 4, 9, 30)
    assert is_open({"start": "09:00", "end": "10:00"}, "America/Nowhere_Yet", now)
    assert next_open({"start": "11:00", "end": "12:00"}, "America/Nowhere_Yet", now) == datetime(
        2026, 12, 4, 11, 0, tzinfo=UTC
    )


def test_window_is_read_in_local_time() -> None:
    now = datetime(2026, 12, 4, 19, 30)  # naive UTC: 20:30 in Paris, 14:30 in New York
    assert not is_open(WINDOW, "Europe/Paris", now)
    assert is_open(WINDOW, "America/New_York", now)
    assert is_open(WINDOW, "UTC", now)
    assert is_open(None, "Europe/Paris", now)
    assert not is_open({"start": "09:00", "end": "19:30"}, "UTC", now)  # the end is excluded
    assert is_open({"start": "19:30", "end": "24:00"}, "UTC", now)


def test_next_opening_is_tomorrow_morning_local_time() -> None:
    now = datetime(2026, 12, 4, 19, 30)
    assert next_open(WINDOW, "Europe/Paris", now) == datetime(2026, 12, 5, 8, 0, tzinfo=UTC)  # 09:00 CET
    assert next_open(WINDOW, "Asia/Tokyo", now) == datetime(2026, 12, 5, 0, 0, tzinfo=UTC)  # 09:00 JST
    assert next_open(WINDOW, "America/New_York", now) == now.replace(tzinfo=UTC)  # open now
    early = datetime(2026, 12, 4, 3, 0)  # 04:00 in Paris: opens later today
    assert next_open(WINDOW, "Europe/Paris", early) == datetime(2026, 12, 4, 8, 0, tzinfo=UTC)


def test_next_opening_follows_daylight_saving_time() -> None:
    before = datetime(2026, 3, 28, 21, 0)  # Saturday night; Paris moves to CEST on Sunday
    assert next_open(WINDOW, "Europe/Paris", before) == datetime(2026, 3, 29, 7, 0, tzinfo=UTC)  # 09:00 CEST


def test_a_zone_from_a_phone_is_cheap_enough_for_a_million_recipients() -> None:
    """The snapshot of a windowed campaign derives a zone per recipient: parsing each number
    with phonenumbers cost 15 µs (15 s at 1,000,000); single-country codes need no parse and
    +1 is remembered by area code. Same answers as the full parse."""
    import phonenumbers

    from core import zones

    phones = ["+33612345678", "+17875551234", "+17875559999", "+14155550100", "+8613800138000", "+abc", "+9"]
    assert [phone_zone(p) for p in phones] == [
        "Europe/Paris",
        "America/Puerto_Rico",
        "America/Puerto_Rico",
        None,
        "Asia/Shanghai",
        None,
        None,
    ]
    calls = {"n": 0}
    real = phonenumbers.parse

    def counting(*args: object) -> object:
        calls["n"] += 1
        return real(*args)  # type: ignore[arg-type]

    zones._nanp_zones.clear()
    try:
        phonenumbers.parse = counting  # type: ignore[assignment]
        for i in range(1000):
            phone_zone(f"+3361234{i:04d}")
            phone_zone(f"+1787555{i:04d}")
    finally:
        phonenumbers.parse = real
    assert calls["n"] == 1  # the first +1 787 number only
