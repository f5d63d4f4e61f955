"""Engine, sessions and schema migrations (Alembic) for SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.pool import QueuePool
from sqlmodel import Session

from core import unsubscribe
from core.settings import Settings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

T = TypeVar("T")
_engines: dict[str, Engine] = {}
SQLITE_POOL = 40
_lock = threading.Lock()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API read while a flow writes; busy_timeout makes writers queue, not fail.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    # Transactions are begun explicitly (see the "begin" listener), not by pysqlite.
    dbapi_connection.isolation_level = None


def make_engine(url: str, *, read_only: bool = False) -> Engine:
    """A new engine for `url`, tuned for this service.

    On SQLite every write transaction starts with BEGIN IMMEDIATE (read-then-write transactions
    queue instead of failing); a `read_only` engine keeps plain deferred BEGIN so that, under
    WAL, reads never wait for a writer."""
    if url.startswith("sqlite"):
        if url.startswith("sqlite:///") and ":memory:" not in url:
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # A pool as big as the API's thread pool (anyio's 40 threads): opening a SQLite
        # connection (and its PRAGMAs) per request costs more than most queries here, and a
        # connection above pool_size is closed again when returned (with 32 provider callbacks
        # in flight, a third of the API's CPU went to opening and closing connections).
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            poolclass=QueuePool,
            pool_size=SQLITE_POOL,
            max_overflow=16,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        if read_only:
            event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN"))
        else:
            _queue_writers(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _queue_writers(engine: Engine) -> None:
    """Write transactions on SQLite: BEGIN IMMEDIATE (read-then-write transactions never
    deadlock), and within this process one writer at a time in a queue. Without the queue,
    threads waiting for SQLite's lock poll it with sleeps of up to 100 ms and the unlucky ones
    wait for seconds under load (API creates measured p99 10 s); a lock hands over at once.
    Other processes still queue in SQLite's busy handler. The wait is bounded: a thread that
    somehow already holds it (two write transactions at once) goes on to SQLite after 30 s."""
    writer = threading.Lock()

    def begin(conn: Any) -> None:
        conn.info["campaigns_writer"] = writer.acquire(timeout=30)
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            end(conn)
            raise

    def end(conn: Any) -> None:
        if conn.info.pop("campaigns_writer", False):
            writer.release()

    event.listen(engine, "begin", begin)
    event.listen(engine, "commit", end)
    event.listen(engine, "rollback", end)


def get_engine(settings: Settings) -> Engine:
    """The process-wide engine for the configured database (one per URL)."""
    url = settings.resolved_database_url()
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url)
        return engine


def get_read_engine(settings: Settings) -> Engine:
    """The engine for read-only work; on PostgreSQL simply the main engine."""
    url = settings.resolved_database_url()
    if not url.startswith("sqlite"):
        return get_engine(settings)
    with _lock:
        engine = _engines.get("read:" + url)
        if engine is None:
            engine = _engines["read:" + url] = make_engine(url, read_only=True)
        return engine


def dispose_engines() -> None:
    """Close every pooled connection (tests, shutdown)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def run_in_session(engine: Engine, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """`fn(session, *args, **kwargs)` in one transaction."""
    with session_scope(engine) as session:
        return fn(session, *args, **kwargs)


async def in_session(engine: Engine, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """run_in_session on a worker thread, so an event loop keeps serving while the DB works."""
    return await asyncio.to_thread(run_in_session, engine, fn, *args, **kwargs)


def alembic_config(url: str) -> Any:
    """An Alembic config pointing at the packaged migrations."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(settings: Settings) -> None:
    """Create or upgrade the schema to the newest revision; never drops data."""
    from alembic import command

    url = settings.resolved_database_url()
    engine = get_engine(settings)
    config = alembic_config(url)
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        connection.commit()
    with session_scope(engine) as session:  # the product's own keys exist before anyone signs
        unsubscribe.ensure_key(session)
