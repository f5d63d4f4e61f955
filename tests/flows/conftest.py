"""One session-scoped Prefect test harness (a real local Prefect API) for the flow tests.

Prefect is imported only when a test here runs, so the fast suite stays Prefect-free."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from core.db import dispose_engines, get_engine, migrate
from core.settings import Settings, get_settings

pytestmark = pytest.mark.prefect

FLOW_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "CAMPAIGNS_SANDBOX__DELIVERY_DELAY_S": "0",
    "CAMPAIGNS_DELIVERY__POLL_INTERVAL_S": "0.1",
    "CAMPAIGNS_CHUNK_SIZE": "4",
}


@pytest.fixture(scope="session")
def flow_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Environment-driven settings (what tasks and hooks read) on a fresh database."""
    root = tmp_path_factory.mktemp("flows")
    saved = dict(os.environ)
    os.environ.update(FLOW_ENV)
    os.environ["PREFECT_HOME"] = str(root / "prefect")
    os.environ["CAMPAIGNS_DATA_DIR"] = str(root)
    os.environ["CAMPAIGNS_DATABASE_URL"] = f"sqlite:///{Path(root) / 'campaigns.db'}"
    get_settings.cache_clear()
    settings = get_settings()
    migrate(settings)
    try:
        yield settings
    finally:
        dispose_engines()
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()


@pytest.fixture(scope="session")
def prefect_harness(flow_settings: Settings) -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def flow_engine(flow_settings: Settings, prefect_harness: None) -> Engine:
    return get_engine(flow_settings)
