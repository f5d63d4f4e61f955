"""Fast-suite fixtures: a migrated SQLite database per test (copied from a session template),
the API over it with a recording launcher. No Prefect here."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from api.app import create_app
from core.db import dispose_engines, make_engine, migrate
from core.errors import Unavailable
from core.schedules import Planned
from core.settings import Settings


class RecordingLauncher:
    """Records launches and cancels instead of talking to Prefect."""

    def __init__(self) -> None:
        self.launched: list[dict[str, object]] = []
        self.cancelled: list[str] = []
        self.paused: list[str] = []
        self.resumed: list[tuple[str, datetime | None]] = []
        self.rescheduled: list[tuple[str, datetime | None]] = []
        self.resumable = True
        self.fail = False

    async def launch(
        self,
        *,
        campaign_id: str,
        account_id: str,
        channel: str,
        scheduled_at: datetime | None,
        key: str | None = None,
        name: str | None = None,
        schedule_id: str | None = None,
    ) -> str:
        if self.fail:
            raise RuntimeError("prefect is down")
        self.launched.append(
            {
                "campaign_id": campaign_id,
                "account_id": account_id,
                "channel": channel,
                "scheduled_at": scheduled_at,
                "key": key,
                "name": name,
                "schedule_id": schedule_id,
            }
        )
        return f"fr-{key or campaign_id}"

    async def cancel(self, *, flow_run_id: str) -> None:
        self.cancelled.append(flow_run_id)

    async def pause(self, *, flow_run_id: str) -> None:
        self.paused.append(flow_run_id)

    async def resume(self, *, flow_run_id: str, scheduled_at: datetime | None) -> bool:
        self.resumed.append((flow_run_id, scheduled_at))
        return self.resumable

    async def reschedule(self, *, flow_run_id: str, scheduled_at: datetime | None) -> None:
        self.rescheduled.append((flow_run_id, scheduled_at))

    async def healthy(self) -> bool:
        return True


class MemoryScheduler:
    """Schedules kept in memory instead of in Prefect (next runs computed with croniter)."""

    def __init__(self) -> None:
        self.schedules: dict[str, Planned] = {}
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise Unavailable("prefect is down")

    def _next(self, planned: Planned) -> datetime | None:
        from zoneinfo import ZoneInfo

        from croniter import croniter

        timing, now = planned.timing, datetime.now(UTC)
        if timing.cron is not None:
            local = now.astimezone(ZoneInfo(timing.timezone))
            return croniter(timing.cron, local).get_next(datetime).astimezone(UTC)  # type: ignore[no-any-return]
        assert timing.interval_seconds and timing.anchor
        anchor = timing.anchor.replace(tzinfo=UTC) if timing.anchor.tzinfo is None else timing.anchor
        steps = max(0, int((now - anchor).total_seconds() // timing.interval_seconds) + 1)
        return anchor + timedelta(seconds=steps * timing.interval_seconds)

    async def create(self, planned: Planned) -> None:
        self._check()
        self.schedules[planned.slug] = planned

    async def read_all(self) -> dict[str, Planned]:
        self._check()
        return {
            slug: replace(p, next_run_at=self._next(p) if p.active else None)
            for slug, p in self.schedules.items()
        }

    async def set_active(self, slug: str, active: bool) -> bool:
        self._check()
        if slug not in self.schedules:
            return False
        self.schedules[slug] = replace(self.schedules[slug], active=active)
        return True

    async def set_parameters(self, slug: str, parameters: dict[str, Any]) -> bool:
        self._check()
        if slug not in self.schedules:
            return False
        self.schedules[slug] = replace(self.schedules[slug], parameters=dict(parameters))
        return True

    async def delete(self, slug: str) -> bool:
        self._check()
        return self.schedules.pop(slug, None) is not None


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "campaigns.db"
    migrate(Settings(database_url=f"sqlite:///{path}"))
    dispose_engines()  # closing the pooled connections checkpoints the WAL into the file we copy
    return path


@pytest.fixture
def settings(tmp_path: Path, template_db: Path) -> Settings:
    db = tmp_path / "campaigns.db"
    shutil.copy(template_db, db)
    return Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{db}",
        api={"rate_per_second": 1000, "burst": 1000},
        delivery={"retry_window_s": 2, "poll_interval_s": 0.05, "max_backoff_s": 0.05},
        sandbox={"delivery_delay_s": 0},
    )


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    eng = make_engine(settings.resolved_database_url())
    yield eng
    eng.dispose()


@pytest.fixture
def launcher() -> RecordingLauncher:
    return RecordingLauncher()


@pytest.fixture
def scheduler() -> MemoryScheduler:
    return MemoryScheduler()


@pytest.fixture
def client(
    settings: Settings, engine: Engine, launcher: RecordingLauncher, scheduler: MemoryScheduler
) -> Iterator[TestClient]:
    app = create_app(settings, launcher=launcher, scheduler=scheduler, engine=engine)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@contextlib.contextmanager
def _new_pg_database() -> Iterator[str]:
    """Create a PostgreSQL database for a test (dropped after), or skip when PostgreSQL is absent."""
    import os
    import secrets

    from sqlalchemy import create_engine, text

    admin_url = os.environ.get("CAMPAIGNS_TEST_PG_URL", PG_ADMIN_URL)
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        pytest.skip(f"PostgreSQL not reachable at {admin_url}: {exc.__class__.__name__}")
    name = f"campaigns_test_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        from core.db import dispose_engines

        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database shared by this session's database tests."""
    with _new_pg_database() as url:
        yield url


@pytest.fixture
def own_pg_url() -> Iterator[str]:
    """A PostgreSQL database of this test alone (a worker's reconciler would launch every open
    campaign other tests left in a shared one)."""
    with _new_pg_database() as url:
        yield url


@pytest.fixture(scope="session")
def pg_engine(pg_url: str) -> Iterator[Engine]:
    migrate(Settings(database_url=pg_url))
    eng = make_engine(pg_url)
    yield eng
    eng.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, engine: Engine) -> Iterator[Engine]:
    """The test's SQLite database, then the session's PostgreSQL one (skipped where absent)."""
    if request.param == "sqlite":
        yield engine
    else:
        yield request.getfixturevalue("pg_engine")
