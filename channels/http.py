"""What the HTTP adapters share: one fast transport per chunk, and error classification.

httpx is the client API (tests plug in `httpx.MockTransport`); its default async transport
costs ~3 ms of CPU per request, so production uses our own aiohttp-backed transport below,
about 7x faster per request (`bench/throughput.py`, README "Performance")."""

from __future__ import annotations

import base64
import email.utils
import time
from typing import Any

import aiohttp
import httpx
import yarl

from channels.base import SendError, TransientSendError, UnknownOutcomeError, capped_retry_after

USER_AGENT = "campaigns/1"


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport on one `aiohttp.ClientSession`, for whole (non-streamed) bodies.

    httpx's own async transport costs ~3 ms of CPU per request here and the `httpx-aiohttp`
    package's wraps every body in a stream and rebuilds timeouts and URLs per request; this one
    sends the request's bytes and returns the response with its body read, reusing parsed
    URLs and timeouts (the adapters call a handful of URLs). Measured against the Twilio fake:
    see bench/throughput.py. aiohttp errors become the httpx errors they mean: never connected
    (ConnectError, ConnectTimeout) versus sent but no answer (ReadTimeout, ReadError)."""

    def __init__(self, max_connections: int = 100) -> None:
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, yarl.URL] = {}
        self._timeouts: dict[tuple[Any, ...], aiohttp.ClientTimeout] = {}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
        return self._session

    def _url(self, url: httpx.URL) -> yarl.URL:
        text = str(url)
        parsed = self._urls.get(text)
        if parsed is None:
            if len(self._urls) > 1024:
                self._urls.clear()
            parsed = self._urls[text] = yarl.URL(text, encoded=True)
        return parsed

    def _timeout(self, extensions: dict[str, Any]) -> aiohttp.ClientTimeout:
        spec = extensions.get("timeout") or {}
        key = (spec.get("connect"), spec.get("read"), spec.get("pool"))
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(
                sock_connect=key[0], sock_read=key[1], connect=key[2]
            )
        return timeout

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = request.content  # provider requests are small and fully built
        error: httpx.TransportError
        try:
            async with self._client().request(
                request.method,
                self._url(request.url),
                headers=request.headers.multi_items(),
                data=body or None,
                allow_redirects=False,
                timeout=self._timeout(request.extensions),
            ) as response:
                content = await response.read()
                return httpx.Response(
                    response.status, headers=response.raw_headers, content=content, request=request
                )
        except aiohttp.ClientConnectorError as exc:
            error = httpx.ConnectError(without_path(exc, request.url), request=request)
        except aiohttp.ConnectionTimeoutError as exc:
            error = httpx.ConnectTimeout(without_path(exc, request.url), request=request)
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            error = httpx.ReadTimeout(without_path(exc, request.url) or "no answer in time", request=request)
        except aiohttp.ClientError as exc:
            error = httpx.ReadError(without_path(exc, request.url), request=request)
        # Raised outside the handlers: aiohttp's exception (whose text has the URL, and a Telegram
        # URL has the bot token) must not ride along as __context__ into tracebacks and logs.
        raise error

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def without_path(exc: BaseException, url: httpx.URL) -> str:
    """The exception's class and text with the request's path and query cut out of it: the
    path can hold a credential (Telegram's bot token), and error texts end up stored as
    `messages.error_message` and in logs."""
    origin = f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}"
    text = str(exc)
    text = text.replace(str(url), origin + "/…")
    for path in (url.raw_path.decode("ascii", "replace"), url.path):  # as sent, and decoded
        if len(path) > 1:
            text = text.replace(path, "/…")
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def aiohttp_transport(max_connections: int = 100) -> httpx.AsyncBaseTransport:
    """The transport the adapters use in production."""
    return AiohttpTransport(max_connections)


def retry_after_seconds(response: httpx.Response) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date) capped at MAX_RETRY_AFTER_S,
    None if absent or garbled."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return capped_retry_after(float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return capped_retry_after(when.timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def raise_for_transient_status(response: httpx.Response) -> None:
    """429 and 5xx are transient (honouring Retry-After)."""
    if response.status_code == 429 or response.status_code >= 500:
        raise TransientSendError(
            f"provider answered HTTP {response.status_code}",
            code=str(response.status_code),
            retry_after=retry_after_seconds(response),
        )


def error_code(value: Any) -> int | None:
    """A provider's numeric error code (an int, or digits in a string), None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit() and len(value) <= 18:
        return int(value)
    return None


def json_or_empty(response: httpx.Response) -> dict[str, Any]:
    """The JSON object body, or {} if the body is not a JSON object."""
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class HttpAdapter:
    """What the HTTP adapters share: one transport (connection pool) per chunk, and one
    request path that hands an `httpx.Request` straight to that transport.

    `httpx.AsyncClient.request` re-parses and merges the URL, runs the auth, redirect and cookie
    machinery and copies headers on every call: half of the CPU of a request measured against
    the Twilio fake. Provider APIs need none of it (no redirects, no cookies, fixed headers), so
    requests are built once per call with prebuilt URLs and headers and sent through the
    transport, which keeps httpx's API and lets tests plug in `httpx.MockTransport`."""

    def __init__(
        self,
        base_url: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 10.0,
        auth: tuple[str, str] | None = None,
        headers: dict[str, str] | None = None,
        secrets: tuple[str, ...] = (),
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # Credentials that may appear in a URL: never in an error text (see redact).
        self.secrets = tuple(secret for secret in secrets if secret)
        self.transport = transport
        self.timeout = timeout
        fixed = {"User-Agent": USER_AGENT, **(headers or {})}
        if auth is not None:
            fixed["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
        self.headers = httpx.Headers(fixed)  # normalized once, copied per request
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, 5.0)).as_dict()
        self._urls: dict[str, httpx.URL] = {}
        self._open: httpx.AsyncBaseTransport | None = None

    async def open(self) -> None:
        """One connection pool for the chunk."""
        self._open = self.transport or aiohttp_transport()

    async def close(self) -> None:
        """Close the pool (a transport passed in by the caller stays the caller's)."""
        if self._open is not None and self.transport is None:
            await self._open.aclose()
        self._open = None

    def url(self, path: str) -> httpx.URL:
        """The absolute URL of an API path, parsed once per adapter."""
        url = self._urls.get(path)
        if url is None:
            if len(self._urls) > 1024:
                self._urls.clear()
            url = self._urls[path] = httpx.URL(self.base_url + path)
        return url

    async def call(
        self,
        method: str,
        path: str,
        *,
        data: dict[str, str] | None = None,
        json: Any = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request and read its body. A request that never reached the provider is a
        TransientSendError; a POST that went out without an answer is an UnknownOutcomeError."""
        assert self._open is not None, "open() first"
        url = self.url(path) if params is None else httpx.URL(self.base_url + path, params=params)
        request = httpx.Request(
            method,
            url,
            headers=self.headers,
            data=data,
            json=json,
            extensions={"timeout": self._timeout},
        )
        error: SendError
        try:
            response = await self._open.handle_async_request(request)
            await response.aread()  # already read by our transport; MockTransport streams
            return response
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # Never connected, so nothing was sent: safe to send again.
            error = TransientSendError(
                f"cannot reach the provider: {self.redact(exc)}", code="connection_error"
            )
        except (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError) as exc:
            if method in ("GET", "HEAD"):  # a lookup may simply be asked again
                error = TransientSendError(f"no answer from the provider: {self.redact(exc)}", code="timeout")
            else:
                # The request went out and no answer came: the provider may have accepted it, and
                # sending again blindly could deliver it twice (the sender looks it up first).
                error = UnknownOutcomeError(
                    f"sent, but no answer from the provider ({exc.__class__.__name__})"
                )
        except httpx.TransportError as exc:  # write errors, pool timeouts: the request did not go out whole
            error = TransientSendError(
                f"cannot reach the provider: {self.redact(exc)}", code="connection_error"
            )
        # Raised outside the handlers, so the transport's exception (its text may hold the URL)
        # is not chained into tracebacks; its redacted text is in the message.
        raise error

    def redact(self, exc: BaseException) -> str:
        """An exception's text with this adapter's URL credentials blanked out."""
        text = str(exc) or exc.__class__.__name__
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text
