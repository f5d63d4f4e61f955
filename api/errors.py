"""Every error leaves as the SPEC body: {error, message, details, request_id}."""

from __future__ import annotations

import logging
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import DomainError, RateLimited, Unavailable
from core.logs import request_id_var

log = logging.getLogger("campaigns.api")

HTTP_CODES = {
    413: "payload_too_large",
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    422: "validation_error",
    429: "rate_limit_exceeded",
    503: "service_unavailable",
}


ERROR_DESCRIPTIONS = {
    400: "Malformed JSON, a missing or mistyped field, or bad pagination (invalid_request).",
    401: "Missing, malformed, unknown or revoked API key (unauthorized).",
    403: "Bad webhook signature (forbidden).",
    404: "No such resource in this account (not_found).",
    409: "Conflicts with the resource's current state (conflict).",
    413: "The request body is too large (payload_too_large).",
    422: "Well-formed but semantically invalid (validation_error, insufficient_credits).",
    429: "Over the account's rate limit (rate_limit_exceeded); see Retry-After.",
    500: "Internal error (internal_error).",
    503: "Prefect did not answer; nothing was changed (service_unavailable); see Retry-After.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses, each with the SPEC error body (429 also
    declares its Retry-After header)."""
    from models.public import ErrorBody

    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted({*statuses, 500}):
        entry: dict[str, Any] = {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[status]}
        if status in (429, 503):
            entry["headers"] = {
                "Retry-After": {"description": "Seconds to wait (≥ 1).", "schema": {"type": "integer"}}
            }
        out[status] = entry
    return out


# The errors every authenticated route can return before it does anything.
AUTH_ERRORS = (400, 401, 413, 429)


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The SPEC error body with the current request id."""
    rid = request_id_var.get() or new_request_id()
    out_headers = {"X-Request-ID": rid, **(headers or {})}
    return JSONResponse(
        status_code=status,
        content={"error": code, "message": message, "details": details, "request_id": rid},
        headers=out_headers,
    )


def new_request_id() -> str:
    """A fresh `req_…` id."""
    return "req_" + secrets.token_hex(12)


_NOT_AN_OBJECT = ("missing", "dict_type", "model_attributes_type")


def _validation_details(exc: RequestValidationError) -> dict[str, Any]:
    errors = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        errors.append({"field": ".".join(loc) or None, "message": err.get("msg", "invalid")})
    return {"errors": errors}


class RequestIdMiddleware:
    """Gives every request an id (X-Request-ID on every response, `request_id` in error bodies)
    and turns anything unhandled into the SPEC 500 body. Plain ASGI: Starlette's
    BaseHTTPMiddleware runs each request in an extra task and streams the response through a
    memory channel, a tenth of the API's CPU per request."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = new_request_id()
        token = request_id_var.set(rid)
        header = (b"x-request-id", rid.encode())
        started = False

        async def send_with_id(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:  # the last line of defence: no stack trace leaves the process
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await error_response(500, "internal_error", "internal server error")(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


async def _authentication_first(request: Request) -> JSONResponse | None:
    """FastAPI parses a JSON body before it runs the route's dependencies; SPEC's order is
    401 authentication, then 429 rate limit, then 400. A body that did not parse on an
    authenticated route is therefore answered with the authentication's error, if any."""
    from api.deps import current_account_id

    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    needs_key = dependant is not None and any(d.call is current_account_id for d in dependant.dependencies)
    if not needs_key:
        return None
    try:
        await current_account_id(request)
    except DomainError as err:
        headers = (
            {"Retry-After": str(err.retry_after)} if isinstance(err, RateLimited | Unavailable) else None
        )
        return error_response(err.status_code, err.code, err.message, err.details, headers)
    return None


def install(app: FastAPI) -> None:
    """Register the request-id middleware and the exception handlers."""

    app.add_middleware(RequestIdMiddleware)

    @app.exception_handler(DomainError)
    async def domain_error(_request: Request, exc: DomainError) -> JSONResponse:
        headers = (
            {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited | Unavailable) else None
        )
        return error_response(exc.status_code, exc.code, exc.message, exc.details, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = _validation_details(exc)
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            refused = await _authentication_first(request)
            if refused is not None:
                return refused
            message = "malformed JSON"
        elif first.get("loc") == ("body",) and first.get("type") in _NOT_AN_OBJECT:
            message = "request body must be a JSON object"
        else:
            field = details["errors"][0]["field"] if details["errors"] else None
            text = str(first.get("msg", "invalid request"))
            message = f"{field}: {text}" if field else text
        return error_response(400, "invalid_request", message, details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # a body FastAPI could not parse (e.g. nested too deeply)
            refused = await _authentication_first(request)
            if refused is not None:
                return refused
        code = HTTP_CODES.get(
            exc.status_code, "internal_error" if exc.status_code >= 500 else "invalid_request"
        )
        message = {404: "no such route", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
        return error_response(
            exc.status_code, code, message, None, dict(exc.headers) if exc.headers else None
        )

    @app.exception_handler(Exception)
    async def unhandled(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(500, "internal_error", "internal server error")
