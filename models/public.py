"""Response bodies of the HTTP API, as `/openapi.json` describes them (SPEC §2, §7, §9)."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class ErrorBody(BaseModel):
    """Every error the API returns, whatever its status."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": "not_found",
                    "message": "campaign not found",
                    "details": None,
                    "request_id": "req_5f0c6a1e9b2d4c7a8e3f1b20",
                }
            ]
        }
    )

    error: str = Field(description="A stable code, e.g. invalid_request, not_found, rate_limit_exceeded.")
    message: str = Field(description="Human-readable text.")
    details: dict[str, Any] | None = Field(description="More about the error, e.g. the fields at fault.")
    request_id: str = Field(description="The X-Request-ID of this response.")


class PageMeta(BaseModel):
    page: int = Field(ge=1)
    per_page: int = Field(ge=1, le=100)
    total: int = Field(ge=0)


class Page(BaseModel, Generic[T]):
    """A page of a list, newest first."""

    data: list[T]
    meta: PageMeta
