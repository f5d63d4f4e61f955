"""GET /metrics and the HTTP request metrics (SPEC §9).

Each API process counts its requests in memory (core/metrics.py), flushes them into the
database every couple of seconds and before answering a scrape, so any process's /metrics
shows every process's requests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from time import perf_counter
from typing import Any

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.routing import Route

from api.errors import error_responses
from core import metrics

UNMATCHED = "unmatched"
# Any other method a client sends is counted as OTHER: the label set stays bounded.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER = "OTHER"


class HttpMetricsMiddleware:
    """Counts and times every request by method, route template and status. Plain ASGI (see
    api/errors.py): the route is read from the scope after routing, so the label is the
    template (`/v1/campaigns/{campaign_id}`), and a path no route matched is `unmatched`
    (404 scanners cannot blow up the number of series)."""

    def __init__(self, app: Any, accumulator: metrics.Accumulator, routes: Any) -> None:
        self.app = app
        self.record = accumulator.http_request
        self.routes = routes
        self._templates: dict[Any, str] | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        status = 500  # unless a response starts

        async def send_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            method = scope["method"] if scope["method"] in METHODS else OTHER
            self.record(method, self._route(scope), str(status), perf_counter() - started)

    def _route(self, scope: Any) -> str:
        route = scope.get("route")  # set by the router for the app's API routes
        if route is not None:
            return str(getattr(route, "path_format", None) or getattr(route, "path", UNMATCHED))
        endpoint = scope.get("endpoint")  # plain routes (/docs, /openapi.json) set only this
        if endpoint is None:
            return UNMATCHED
        if self._templates is None:
            self._templates = {r.endpoint: r.path_format for r in self.routes if isinstance(r, Route)}
        return self._templates.get(endpoint, UNMATCHED)


def install(app: FastAPI) -> None:
    """Mount /metrics and count every request."""
    accumulator = metrics.Accumulator()  # this process's requests to this app
    app.add_middleware(HttpMetricsMiddleware, accumulator=accumulator, routes=app.routes)
    _flush_while_serving(app, accumulator)

    def scrape(request: Request) -> Response:
        engine = request.app.state.campaigns.engine
        accumulator.try_flush(engine)  # our own requests, up to this one
        metrics.default.try_flush(engine)  # provider requests made in this process, if any
        body = generate_latest(metrics.registry_for(request.app.state.campaigns.read_engine))
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def metrics_endpoint(request: Request) -> Response:
        """Prometheus metrics of every process, from the database (no API key)."""
        return await run_in_threadpool(scrape, request)

    app.add_api_route(
        "/metrics",
        metrics_endpoint,
        methods=["GET"],
        include_in_schema=True,
        tags=["operations"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={
            200: {
                "description": "The Prometheus text exposition format.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            **error_responses(),
        },
    )


def _flush_while_serving(app: FastAPI, accumulator: metrics.Accumulator) -> None:
    """Flush the app's counts every few seconds while it serves, and once more at shutdown."""
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[Any]:
        flusher = metrics.Flusher(accumulator, app_.state.campaigns.engine)
        flusher.start()
        try:
            async with inner(app_) as state:
                yield state
        finally:
            await run_in_threadpool(flusher.stop)

    app.router.lifespan_context = lifespan
