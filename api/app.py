"""The FastAPI application factory."""

from __future__ import annotations

from fastapi import FastAPI
from sqlalchemy import Engine

from api import errors
from api.deps import AppState
from api.routes import account, campaigns, contacts, webhooks
from core.db import get_engine, get_read_engine, make_engine
from core.launcher import Launcher, NullLauncher
from core.ratelimit import TokenBuckets
from core.settings import Settings, get_settings


def create_app(
    settings: Settings | None = None, *, launcher: Launcher | None = None, engine: Engine | None = None
) -> FastAPI:
    """Build the API over a migrated database; the launcher starts flow runs."""
    settings = settings or get_settings()
    app = FastAPI(
        title="Campaigns API",
        version="0.1.0",
        description="Broadcast one message to a contact list over SMS, WhatsApp, "
        "Telegram, email or Slack; every campaign is a Prefect flow run.",
    )
    app.state.campaigns = AppState(
        settings=settings,
        engine=engine or get_engine(settings),
        read_engine=(
            make_engine(str(engine.url), read_only=True)
            if engine is not None and engine.dialect.name == "sqlite"
            else engine or get_read_engine(settings)
        ),
        launcher=launcher or NullLauncher(),
        buckets=TokenBuckets(settings.api.rate_per_second, settings.api.burst),
    )
    errors.install(app)
    app.include_router(campaigns.router)
    app.include_router(contacts.router)
    app.include_router(account.router)
    app.include_router(webhooks.router)
    return app
