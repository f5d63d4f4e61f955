"""UTC helpers: every datetime is timezone-aware UTC; the API prints ISO 8601 with a Z suffix."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Current time, aware UTC."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """Aware UTC from any datetime; naive input is taken as UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def iso_z(value: datetime | None) -> str | None:
    """ISO 8601 UTC with a Z suffix and second precision, e.g. 2026-07-01T08:00:00Z."""
    if value is None:
        return None
    return as_utc(value).replace(microsecond=0, tzinfo=None).isoformat() + "Z"
