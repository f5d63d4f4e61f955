"""Every error leaves as the SPEC body: {error, message, details, request_id}."""

from __future__ import annotations

import contextvars
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import DomainError, RateLimited

log = logging.getLogger("campaigns.api")
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    422: "validation_error",
    429: "rate_limit_exceeded",
}


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


def _validation_details(exc: RequestValidationError) -> dict[str, Any]:
    errors = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        errors.append({"field": ".".join(loc) or None, "message": err.get("msg", "invalid")})
    return {"errors": errors}


def install(app: FastAPI) -> None:
    """Register the request-id middleware and the exception handlers."""

    @app.middleware("http")
    async def request_id_middleware(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        rid = new_request_id()
        token = request_id_var.set(rid)
        try:
            response = await call_next(request)
        except Exception:  # the last line of defence: no stack trace leaves the process
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            response = error_response(500, "internal_error", "internal server error")
        finally:
            request_id_var.reset(token)
        response.headers["X-Request-ID"] = rid
        return response

    @app.exception_handler(DomainError)
    async def domain_error(_request: Request, exc: DomainError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else None
        return error_response(exc.status_code, exc.code, exc.message, exc.details, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(
            400, "invalid_request", "request parameters are invalid", _validation_details(exc)
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
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
