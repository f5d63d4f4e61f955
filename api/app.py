"""The FastAPI application factory."""

from __future__ import annotations

from fastapi import FastAPI
from sqlalchemy import Engine

from api import errors, observability, openapi
from api.deps import AppState, KeyCache
from api.limits import BodyLimitMiddleware
from api.routes import (
    account,
    api_keys,
    campaigns,
    contacts,
    schedules,
    unsubscribe,
    webhook_endpoints,
    webhooks,
)
from core.db import get_engine, get_read_engine, make_engine
from core.launcher import Launcher, NullLauncher
from core.ratelimit import Buckets, DbTokenBuckets, TokenBuckets
from core.schedules import NullScheduler, Scheduler
from core.settings import Settings, get_settings


def create_app(
    settings: Settings | None = None,
    *,
    launcher: Launcher | None = None,
    scheduler: Scheduler | None = None,
    engine: Engine | None = None,
) -> FastAPI:
    """Build the API over a migrated database; the launcher starts flow runs, the scheduler
    keeps recurring campaigns."""
    settings = settings or get_settings()
    app = FastAPI(
        title="Campaigns API",
        version="0.1.0",
        description="Broadcast one message to a contact list over SMS, WhatsApp, "
        "Telegram, email or Slack; every campaign is a Prefect flow run.",
    )
    engine = engine or get_engine(settings)
    # Several API processes share PostgreSQL, so the bucket lives there; SQLite is one machine,
    # where each of the API's processes keeps its share in memory (a write per request would
    # queue behind the flows' writes).
    workers = settings.api.workers
    buckets: Buckets = (
        DbTokenBuckets(engine, settings.api.rate_per_second, settings.api.burst)
        if engine.dialect.name == "postgresql"
        else TokenBuckets(settings.api.rate_per_second / workers, max(1, round(settings.api.burst / workers)))
    )
    app.state.campaigns = AppState(
        settings=settings,
        engine=engine,
        read_engine=(
            make_engine(engine.url.render_as_string(hide_password=False), read_only=True)
            if engine.dialect.name == "sqlite"
            else get_read_engine(settings)
            if engine is get_engine(settings)
            else engine
        ),
        launcher=launcher or NullLauncher(),
        scheduler=scheduler or NullScheduler(),
        buckets=buckets,
        keys=KeyCache(settings.api.key_cache_s),
    )
    app.add_middleware(BodyLimitMiddleware, settings=settings.api)
    errors.install(app)
    observability.install(app)
    app.include_router(campaigns.router)
    app.include_router(schedules.router)
    app.include_router(contacts.router)
    app.include_router(account.router)
    app.include_router(api_keys.router)
    app.include_router(webhook_endpoints.router)
    app.include_router(webhooks.router)
    app.include_router(unsubscribe.router)
    openapi.install(app)
    return app
