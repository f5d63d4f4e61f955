"""Benchmark: POST /v1/contacts/import with 100,000 CSV rows, on SQLite and on PostgreSQL.

    python bench/import_100k.py [--rows 100000] [--pg postgresql+psycopg://postgres@127.0.0.1:5432/test]

Each run uses a fresh database (a temporary SQLite file; a new PostgreSQL database, dropped
afterwards), imports the rows once (all created), then again (all updated), and prints rows/s.
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from api.app import create_app
from core import accounts, contacts
from core.db import dispose_engines, get_engine, migrate, session_scope
from core.settings import Settings


def csv_rows(n: int) -> bytes:
    lines = ["name,phone,email,attributes.code"]
    lines += [f"Person {i},+1{2000000000 + i},p{i}@example.com,C{i % 1000}" for i in range(n)]
    return ("\n".join(lines) + "\n").encode()


def run(label: str, url: str, body: bytes, n: int) -> None:
    settings = Settings(database_url=url, api={"rate_per_second": 1000, "burst": 1000})
    migrate(settings)
    with session_scope(get_engine(settings)) as session:
        new = accounts.create_account(session, name="bench")
        lst = contacts.create_list(session, account_id=new.account_id, name="all")
    client = TestClient(create_app(settings))
    headers = {"Authorization": f"Bearer {new.api_key}", "Content-Type": "text/csv"}
    for phase in ("create", "update"):
        start = time.perf_counter()
        r = client.post(f"/v1/contacts/import?list_id={lst.id}", content=body, headers=headers)
        elapsed = time.perf_counter() - start
        r.raise_for_status()
        result = r.json()
        print(
            f"{label:<10} {phase:<7} {n:,} rows in {elapsed:5.2f} s = {n / elapsed:8,.0f} rows/s "
            f"(created {result['created']}, updated {result['updated']}, rejected {result['rejected']})"
        )
    dispose_engines()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    body = csv_rows(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        run("sqlite", f"sqlite:///{Path(tmp) / 'bench.db'}", body, args.rows)
    try:
        admin = create_engine(args.pg, isolation_level="AUTOCOMMIT")
        name = f"campaigns_bench_{secrets.token_hex(4)}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        print(f"postgres   skipped: {exc.__class__.__name__}: {exc}")
        return
    try:
        run("postgres", args.pg.rsplit("/", 1)[0] + f"/{name}", body, args.rows)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
