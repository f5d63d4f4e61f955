"""What the HTTP adapters share: one fast client per chunk, and error classification.

httpx is the client API (tests plug in `httpx.MockTransport`); its default async transport
costs ~3 ms of CPU per request, so production uses aiohttp underneath (`httpx-aiohttp`),
about 6x faster per request (see PERF_NOTES.md)."""

from __future__ import annotations

import email.utils
import time
from typing import Any

import httpx

from channels.base import TransientSendError

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)


def aiohttp_transport(max_connections: int = 100) -> httpx.AsyncBaseTransport:
    """httpx transport backed by aiohttp (falls back to httpx's own if unavailable)."""
    try:
        from httpx_aiohttp import AiohttpTransport
    except ImportError:  # pragma: no cover - the package is a dependency
        return httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=max_connections))
    return AiohttpTransport(limits=httpx.Limits(max_connections=max_connections))


def make_client(
    base_url: str,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    auth: httpx.Auth | tuple[str, str] | None = None,
    headers: dict[str, str] | None = None,
    max_connections: int = 100,
    timeout: float | None = None,
) -> httpx.AsyncClient:
    """An AsyncClient with explicit timeouts and limits for one provider."""
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        transport=transport or aiohttp_transport(max_connections),
        auth=auth,
        headers=headers,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)) if timeout else DEFAULT_TIMEOUT,
    )


def retry_after_seconds(response: httpx.Response) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), None if absent or garbled."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


async def request(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """Send a request; network-level failures become TransientSendError."""
    try:
        return await client.request(method, url, **kwargs)
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        # Never connected, so nothing was sent (the aiohttp transport reports a refused
        # connection as ConnectTimeout).
        raise TransientSendError(f"cannot reach the provider: {exc}", code="connection_error") from exc
    except httpx.TimeoutException as exc:
        raise TransientSendError(f"timeout talking to the provider: {exc}", code="timeout") from exc
    except httpx.TransportError as exc:
        raise TransientSendError(f"cannot reach the provider: {exc}", code="connection_error") from exc


def raise_for_transient_status(response: httpx.Response) -> None:
    """429 and 5xx are transient (honouring Retry-After)."""
    if response.status_code == 429 or response.status_code >= 500:
        raise TransientSendError(
            f"provider answered HTTP {response.status_code}",
            code=str(response.status_code),
            retry_after=retry_after_seconds(response),
        )


def json_or_empty(response: httpx.Response) -> dict[str, Any]:
    """The JSON object body, or {} if the body is not a JSON object."""
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class HttpAdapter:
    """The life cycle the HTTP adapters share: one client (connection pool) per chunk."""

    def __init__(
        self,
        base_url: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 10.0,
        auth: tuple[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.base_url = base_url
        self.transport = transport
        self.timeout = timeout
        self.auth = auth
        self.headers = headers
        self.client: httpx.AsyncClient | None = None

    @property
    def http(self) -> httpx.AsyncClient:
        """The open client (open() must have been called)."""
        assert self.client is not None, "open() first"
        return self.client

    async def open(self) -> None:
        """One connection pool for the chunk."""
        self.client = make_client(
            self.base_url,
            transport=self.transport,
            timeout=self.timeout,
            auth=self.auth,
            headers=self.headers,
        )

    async def close(self) -> None:
        """Close the pool."""
        if self.client is not None:
            await self.client.aclose()
            self.client = None
