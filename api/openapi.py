"""The OpenAPI document as SPEC §9 asks: every error the API gives with its SPEC body, and
nothing it does not give (FastAPI advertises a 422 validation body this API never returns: its
schema errors are 400 invalid_request)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.errors import ERROR_DESCRIPTIONS

_ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
_FASTAPI_ONLY = ("HTTPValidationError", "ValidationError")


def _error(status: int) -> dict[str, Any]:
    content = {"application/json": {"schema": _ERROR_REF}}
    return {"description": ERROR_DESCRIPTIONS[status], "content": content}


_FORM = {
    "application/x-www-form-urlencoded": {
        "schema": {"type": "object", "additionalProperties": {"type": "string"}}
    }
}
# Provider webhooks parse their own bodies (their signatures cover the raw bytes): documented here.
_PROVIDER_HOOKS: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/v1/webhooks/twilio/status"): {
        "requestBody": {"required": True, "content": _FORM, "description": "Twilio's status callback."},
        "responses": {"204": {"description": "Applied (or a redelivery that changed nothing)."}},
    },
    ("post", "/v1/webhooks/twilio/inbound"): {
        "requestBody": {"required": True, "content": _FORM, "description": "An inbound SMS."},
        "responses": {
            "200": {"description": "Empty TwiML.", "content": {"text/xml": {"schema": {"type": "string"}}}}
        },
    },
    ("get", "/v1/webhooks/whatsapp"): {
        "responses": {
            "200": {
                "description": "hub.challenge, echoed.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    },
    ("post", "/v1/webhooks/whatsapp"): {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
            "description": "WhatsApp Cloud API status events.",
        },
        "responses": {
            "200": {
                "description": "How many status updates the body held and how many changed a message.",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {"received": {"type": "integer"}, "applied": {"type": "integer"}},
                            "required": ["received", "applied"],
                        }
                    }
                },
            }
        },
    },
    ("post", "/v1/webhooks/sendgrid"): {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "array", "items": {"type": "object"}}}},
            "description": "SendGrid's signed Event Webhook: a JSON array of events.",
        },
        "responses": {
            "200": {
                "description": "How many events the body held and how many changed a message.",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "received": {"type": "integer"},
                                "applied": {"type": "integer"},
                                "opted_out": {"type": "integer"},
                            },
                            "required": ["received", "applied"],
                        }
                    }
                },
            }
        },
    },
}


def build(app: FastAPI) -> dict[str, Any]:
    """Generate the document once, then fix its error responses."""
    doc = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
    )
    for path, path_item in doc.get("paths", {}).items():
        for method, operation in path_item.items():
            hook = _PROVIDER_HOOKS.get((method, path))
            if hook is not None:
                if "requestBody" in hook:
                    operation["requestBody"] = hook["requestBody"]
                operation["responses"] = {**hook["responses"], "400": _error(400), "403": _error(403)}
            responses: dict[str, Any] = operation.setdefault("responses", {})
            validation = responses.get("422")
            if validation is not None and "HTTPValidationError" in str(validation):
                del responses["422"]
                responses.setdefault("400", _error(400))
            if "requestBody" in operation:
                responses.setdefault("400", _error(400))
                responses.setdefault("413", _error(413))
            responses.setdefault("500", _error(500))
    schemas = doc.get("components", {}).get("schemas", {})
    for name in _FASTAPI_ONLY:
        schemas.pop(name, None)
    return doc


def install(app: FastAPI) -> None:
    """Serve the corrected document at /openapi.json (built on first request, then cached)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
