"""Domain errors: each carries the SPEC error code and HTTP status; api/errors.py maps them."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Base of every error the API turns into the SPEC error body."""

    status_code = 400
    code = "invalid_request"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidRequest(DomainError):
    status_code = 400
    code = "invalid_request"


class Unauthorized(DomainError):
    status_code = 401
    code = "unauthorized"


class Forbidden(DomainError):
    status_code = 403
    code = "forbidden"


class NotFound(DomainError):
    status_code = 404
    code = "not_found"


class Conflict(DomainError):
    status_code = 409
    code = "conflict"


class ValidationFailed(DomainError):
    status_code = 422
    code = "validation_error"


class InsufficientCredits(DomainError):
    status_code = 422
    code = "insufficient_credits"


class RateLimited(DomainError):
    status_code = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, {"retry_after": retry_after})
        self.retry_after = retry_after


class Unavailable(DomainError):
    """The orchestrator (Prefect) did not answer: nothing was changed; try again shortly."""

    status_code = 503
    code = "service_unavailable"

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message, {"retry_after": retry_after})
        self.retry_after = retry_after
