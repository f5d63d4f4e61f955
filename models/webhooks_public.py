"""Bodies of the event webhook endpoint routes (SPEC §9)."""

from __future__ import annotations

from enum import StrEnum
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

MAX_URL_LENGTH = 2048


class WebhookEventType(StrEnum):
    campaign_status_changed = "campaign.status_changed"
    message_failed = "message.failed"


class WebhookEndpointCreate(BaseModel):
    """Where to POST which events."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "url": "https://hooks.example.com/campaigns",
                    "events": ["campaign.status_changed", "message.failed"],
                }
            ]
        },
    )

    url: StrictStr = Field(
        min_length=1, max_length=MAX_URL_LENGTH, description="An http(s) URL on a public address."
    )
    events: list[WebhookEventType] = Field(min_length=1, max_length=10)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
            host = parts.hostname
            parts.port  # noqa: B018 -- raises ValueError on a bad port
        except ValueError:
            raise ValueError("url is not a valid URL") from None
        if parts.scheme not in ("http", "https") or not host:
            raise ValueError("url must be an http or https URL with a host")
        if any(c.isspace() or ord(c) < 0x20 or 0xD800 <= ord(c) <= 0xDFFF for c in value):
            raise ValueError("url must not contain whitespace, control characters or lone surrogates")
        return value

    @field_validator("events")
    @classmethod
    def _distinct(cls, value: list[WebhookEventType]) -> list[WebhookEventType]:
        return list(dict.fromkeys(value))


class WebhookEndpointPublic(BaseModel):
    """An endpoint as lists show it (never its secret)."""

    id: str = Field(description="whe_…")
    url: str
    events: list[WebhookEventType]
    created_at: str = Field(description="ISO 8601 UTC, e.g. 2026-07-01T08:00:00Z.")


class WebhookEndpointCreated(WebhookEndpointPublic):
    """The new endpoint with its signing secret, shown this once."""

    secret: str = Field(description="whsec_…: the HMAC-SHA256 key of X-Campaigns-Signature.")
