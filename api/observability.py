"""GET /metrics and the HTTP request metrics (SPEC §9)."""

from __future__ import annotations

from fastapi import FastAPI


def install(app: FastAPI) -> None:
    """Mount /metrics and count every request."""
