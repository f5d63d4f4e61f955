"""Request body limits (SPEC §9): a body over its route's limit is `413 payload_too_large`
before anything parses it, whether it announces its size (Content-Length) or streams chunked."""

from __future__ import annotations

from typing import Any

from api.errors import error_response
from core.settings import ApiSettings


class BodyLimitMiddleware:
    """Plain ASGI: reads the body up to the route's limit (the import, the provider webhooks and
    everything else have their own), then hands it to the app as one message. Webhook bodies are
    limited before their signature is checked."""

    def __init__(self, app: Any, settings: ApiSettings) -> None:
        self.app = app
        self.settings = settings

    def limit_for(self, path: str) -> int:
        if path.startswith("/v1/webhooks/"):
            return self.settings.max_webhook_bytes
        if path.rstrip("/") == "/v1/contacts/import":
            return self.settings.max_import_bytes
        return self.settings.max_body_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if "\x00" in path or b"%00" in scope.get("query_string", b"").lower():
            # PostgreSQL refuses NUL in text: refused here, once, for every path and query parameter.
            await error_response(400, "invalid_request", "NUL characters are not allowed in the URL")(
                scope, receive, send
            )
            return
        limit = self.limit_for(path)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    announced = int(value)
                except ValueError:
                    await error_response(400, "invalid_request", "bad Content-Length header")(
                        scope, receive, send
                    )
                    return
                if announced > limit:
                    await self._too_large(limit, scope, receive, send)
                    return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message], receive), send)
                return
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                await self._too_large(limit, scope, receive, send)
                return
            if body:
                chunks.append(body)
            if not message.get("more_body", False):
                break
        whole = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([whole], receive), send)

    @staticmethod
    async def _too_large(limit: int, scope: Any, receive: Any, send: Any) -> None:
        response = error_response(
            413,
            "payload_too_large",
            f"request body is larger than {limit} bytes",
            {"max_bytes": limit},
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


def _replay(messages: list[dict[str, Any]], receive: Any) -> Any:
    pending = list(messages)

    async def replayed() -> Any:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
