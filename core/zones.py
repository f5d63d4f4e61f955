"""Recipients' time zones and send windows (quiet hours, SPEC §10).

A recipient's zone is the contact's own `timezone`, else the zone of its phone number's country
(phonenumbers) when that country keeps one clock (the tz database's zone.tab), else the default
(`CAMPAIGNS_DEFAULT_TIMEZONE`). A send window is "HH:MM"-"HH:MM" of local time, start < end
("24:00" may end it); a message goes out only while its recipient's clock is inside it."""

from __future__ import annotations

import contextlib
import logging
import re
from datetime import UTC, datetime, time, timedelta
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import phonenumbers
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE
from phonenumbers.tzdata import TIMEZONE_DATA

HHMM = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]|24:00")
log = logging.getLogger("campaigns.zones")


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def is_zone(name: str) -> bool:
    """True for an IANA time zone name this machine knows (e.g. "Europe/Paris", "UTC")."""
    return isinstance(name, str) and name in _zones()


@lru_cache(maxsize=4096)
def zone(name: str) -> ZoneInfo:
    """The ZoneInfo of a name (cached); a zone this machine does not know (a message's zone
    fixed on a machine with newer time zone data) is read as UTC rather than failing."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        log.warning("unknown time zone %r: read as UTC", name)
        return ZoneInfo("UTC")


def _same_clock(names: tuple[str, ...]) -> bool:
    """True if these zones show the same time all year (links such as Europe/Jersey and
    Europe/London): compared at the solstices and equinoxes of this year and the next."""
    year = datetime.now(UTC).year
    instants = [datetime(y, m, 21, 12, tzinfo=UTC) for y in (year, year + 1) for m in (1, 3, 6, 9, 12)]
    offsets = {tuple(instant.astimezone(zone(n)).utcoffset() for instant in instants) for n in names}
    return len(offsets) == 1


@lru_cache(maxsize=1)
def _country_zones() -> dict[str, tuple[str, ...]]:
    """ISO country code → its IANA zones, main one first, from the time zone database's own
    zone.tab (shipped by the tzdata package; the system's copy otherwise)."""
    text = ""
    try:
        text = resources.files("tzdata").joinpath("zoneinfo/zone.tab").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError, OSError):
        with contextlib.suppress(OSError):
            text = Path("/usr/share/zoneinfo/zone.tab").read_text(encoding="utf-8")
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) >= 3 and not line.startswith("#") and is_zone(fields[2]):
            out.setdefault(fields[0], []).append(fields[2])
    return {country: tuple(names) for country, names in out.items()}


@lru_cache(maxsize=1024)
def country_zone(country: str) -> str | None:
    """The zone of a country (ISO code) that keeps one clock: FR → Europe/Paris, PR →
    America/Puerto_Rico, DE → Europe/Berlin (Busingen keeps Berlin's clock); None for the
    United States, Canada, Russia, Australia..."""
    names = _country_zones().get(country, ())
    if not names or not _same_clock(names):
        return None
    return names[0]


# NANP numbers (+1) belong to a country by their area code: "+1787…" is Puerto Rico.
NANP_KEY = 5
_nanp_zones: dict[str, str | None] = {}


def phone_zone(phone: str | None) -> str | None:
    """The zone of the number's country, if that country has one. Runs per recipient at the
    snapshot of a windowed campaign, so a calling code of one country (most of them) is read
    straight off the number; shared codes are parsed with phonenumbers (+1 787 is Puerto
    Rico, +1 415 the United States), +1 remembered by area code."""
    if not phone or not phone.startswith("+"):
        return None
    prefixes = (phone[1:n] for n in (2, 3, 4))  # calling codes are prefix-free: 1-3 digits
    code = next((int(p) for p in prefixes if p.isdigit() and int(p) in COUNTRY_CODE_TO_REGION_CODE), None)
    if code is None:
        return None
    regions = COUNTRY_CODE_TO_REGION_CODE[code]
    if len(regions) == 1:
        return _region_zone(regions[0], code)
    key = phone[:NANP_KEY] if code == 1 else ""
    if key in _nanp_zones:
        return _nanp_zones[key]
    try:
        number = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return None
    region = phonenumbers.region_code_for_number(number)
    found = _region_zone(region or phonenumbers.region_code_for_country_code(code), code)
    if key and region and len(_nanp_zones) < 10_000:  # a valid number: its area code's country
        _nanp_zones[key] = found
    return found


@lru_cache(maxsize=4096)
def _region_zone(region: str, code: int) -> str | None:
    found = country_zone(region) if region and region != "001" else None
    # The tz database splits a few countries whose people keep one official clock (China's
    # Asia/Urumqi): phonenumbers' zones of the calling code decide there.
    return found or calling_code_zone(code)


@lru_cache(maxsize=1024)
def calling_code_zone(code: int) -> str | None:
    """The one clock phonenumbers gives a whole calling code (+86 → Asia/Shanghai), if one."""
    names = tuple(n for n in TIMEZONE_DATA.get(str(code), ()) if is_zone(n))
    return names[0] if names and _same_clock(names) else None


def recipient_zone(explicit: str | None, phone: str | None, default: str) -> str:
    """The zone a recipient's send window is read in."""
    if explicit and is_zone(explicit):
        return explicit
    return phone_zone(phone) or default


# -- send windows --


def _clock(text: str) -> tuple[int, int]:
    hours, minutes = text.split(":")
    return int(hours), int(minutes)


def window_minutes(window: dict[str, Any]) -> tuple[int, int]:
    """(start, end) in minutes after local midnight."""
    sh, sm = _clock(window["start"])
    eh, em = _clock(window["end"])
    return sh * 60 + sm, eh * 60 + em


def is_open(window: dict[str, Any] | None, zone_name: str, now: datetime) -> bool:
    """True if `now` (aware, or naive UTC) is inside the window in that zone."""
    if not window:
        return True
    start, end = window_minutes(window)
    local = _aware(now).astimezone(zone(zone_name))
    minute = local.hour * 60 + local.minute
    return start <= minute < end


def next_open(window: dict[str, Any], zone_name: str, now: datetime) -> datetime:
    """When the window next opens in that zone (aware UTC): `now` itself if it is open."""
    if is_open(window, zone_name, now):
        return _aware(now).astimezone(UTC)
    start, _end = window_minutes(window)
    tz = zone(zone_name)
    local = _aware(now).astimezone(tz)
    for days in range(0, 3):
        day = (local + timedelta(days=days)).date()
        # A start in a DST gap (02:30 on the spring-forward night) is read as the clock after it.
        opening = datetime.combine(day, time(start // 60, start % 60), tzinfo=tz)
        opening_utc = opening.astimezone(UTC)
        if opening_utc > _aware(now):
            return opening_utc
    return _aware(now + timedelta(days=1))  # unreachable for start < end


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _naive(moment: datetime) -> datetime:
    return _aware(moment).astimezone(UTC).replace(tzinfo=None)
