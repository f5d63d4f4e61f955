"""Event webhook endpoints of an account (SPEC §9)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1/webhook-endpoints", tags=["event webhooks"])
