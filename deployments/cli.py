"""The `campaigns` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from core.db import get_engine, migrate, session_scope
from core.errors import DomainError
from core.logs import configure_logging
from core.settings import Settings, get_settings


def _print(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    print(json.dumps(data) if getattr(args, "json", False) else text)


def _with_db(settings: Settings, fn: Callable[[Any], Any]) -> Any:
    migrate(settings)
    with session_scope(get_engine(settings)) as session:
        return fn(session)


# -- admin commands --


def cmd_accounts_create(args: argparse.Namespace, settings: Settings) -> int:
    from core import accounts

    new = _with_db(
        settings, lambda s: accounts.create_account(s, name=args.name, credits_amount=args.credits)
    )
    _print(
        args,
        {"account_id": new.account_id, "api_key": new.api_key},
        f"account_id: {new.account_id}\napi_key:    {new.api_key}\n(the key is shown once; store it now)",
    )
    return 0


def cmd_keys_create(args: argparse.Namespace, settings: Settings) -> int:
    from core import accounts
    from core.errors import NotFound

    def _create(session: Any) -> tuple[Any, str]:
        if accounts.get_account(session, args.account_id) is None:
            raise NotFound(f"no account {args.account_id}")
        return accounts.create_api_key(session, account_id=args.account_id, name=args.name)

    row, key = _with_db(settings, _create)
    _print(
        args,
        {"key_id": row.id, "api_key": key, "prefix": row.prefix, "account_id": args.account_id},
        f"key_id:  {row.id}\napi_key: {key}\n(the key is shown once; store it now)",
    )
    return 0


def cmd_keys_list(args: argparse.Namespace, settings: Settings) -> int:
    from api.routes.api_keys import key_out
    from core import accounts
    from core.errors import NotFound

    def _list(session: Any) -> list[dict[str, Any]]:
        if accounts.get_account(session, args.account_id) is None:
            raise NotFound(f"no account {args.account_id}")
        rows, _total = accounts.list_api_keys(session, account_id=args.account_id, per_page=10**9)
        return [key_out(r) for r in rows]

    keys = _with_db(settings, _list)
    if getattr(args, "json", False):
        print(json.dumps(keys))
        return 0
    for k in keys:
        state = f"revoked {k['revoked_at']}" if k["revoked_at"] else "active"
        used = k["last_used_at"] or "-"
        name = f"  {k['name']}" if k["name"] else ""
        print(f"{k['id']}  {k['prefix']}…  {state}  created {k['created_at']}  last used {used}{name}")
    return 0


def cmd_keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from api.routes.api_keys import key_out
    from core import accounts

    row = _with_db(settings, lambda s: key_out(accounts.revoke_api_key(s, key_id=args.key_id)))
    _print(args, row, f"revoked {row['id']} ({row['prefix']}…) at {row['revoked_at']}")
    return 0


def cmd_credits_add(args: argparse.Namespace, settings: Settings) -> int:
    from core import credits

    bal = _with_db(settings, lambda s: credits.add_credits(s, account_id=args.account_id, amount=args.amount))
    data = {
        "account_id": args.account_id,
        "balance": bal.balance,
        "reserved": bal.reserved,
        "available": bal.available,
    }
    _print(args, data, f"balance {bal.balance}, reserved {bal.reserved}, available {bal.available}")
    return 0


def cmd_sender_ids_add(args: argparse.Namespace, settings: Settings) -> int:
    from core import accounts, sender_ids
    from core.errors import NotFound

    def _add(session: Any) -> Any:
        if accounts.get_account(session, args.account_id) is None:
            raise NotFound(f"account {args.account_id} not found")
        return sender_ids.register(
            session,
            account_id=args.account_id,
            channel=args.channel,
            value=args.value,
            approved=args.approved,
        )

    sender = _with_db(settings, _add)
    data = {"id": sender.id, "value": sender.value, "channel": sender.channel, "status": sender.status}
    _print(args, data, f"{sender.id} {sender.channel} {sender.value!r}: {sender.status}")
    return 0


def _set_sender_status(status: str) -> Callable[[argparse.Namespace, Settings], int]:
    def run(args: argparse.Namespace, settings: Settings) -> int:
        from core import sender_ids
        from models import SenderIdStatus

        sender = _with_db(
            settings,
            lambda s: sender_ids.set_status(s, sender_id=args.sender_id, status=SenderIdStatus(status)),
        )
        data = {"id": sender.id, "value": sender.value, "channel": sender.channel, "status": sender.status}
        _print(args, data, f"{sender.id} {sender.channel} {sender.value!r}: {sender.status}")
        return 0

    return run


def cmd_contacts_import(args: argparse.Namespace, settings: Settings) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from core import importer
    from core.accounts import get_account
    from core.errors import NotFound

    rows = importer.rows_from_csv(Path(args.file).read_text(encoding="utf-8-sig"))
    if len(rows) > importer.MAX_ROWS:
        raise DomainError(f"an import takes at most {importer.MAX_ROWS} rows; the file has {len(rows)}")
    migrate(settings)
    engine = get_engine(settings)
    with session_scope(engine) as session:
        if get_account(session, args.account) is None:
            raise NotFound(f"account {args.account} not found")
    total = importer.ImportResult()
    columns = (TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=args.json, transient=True) as progress:
        bar = progress.add_task("import", total=len(rows))
        for start in range(0, max(len(rows), 1), importer.BATCH):
            batch = rows[start : start + importer.BATCH]
            with session_scope(engine) as session:
                part = importer.import_contacts(
                    session, account_id=args.account, rows=batch, list_id=args.list, first_row=start + 1
                )
            total.created += part.created
            total.updated += part.updated
            total.rejected_rows += part.rejected_rows
            progress.update(bar, advance=len(batch))
    data = total.as_dict()
    text = f"created {total.created}, updated {total.updated}, rejected {total.rejected}"
    for rejected in total.rejected_rows[:20]:
        text += f"\n  row {rejected['row']}: {rejected['reason']}"
    _print(args, data, text)
    return 0


def cmd_db_upgrade(_args: argparse.Namespace, settings: Settings) -> int:
    migrate(settings)
    print(f"database at the newest schema: {settings.resolved_database_url().split('@')[-1]}")
    return 0


# -- processes --


def _prefect_api_url() -> str | None:
    from prefect.settings import get_current_settings

    return get_current_settings().api.url


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from deployments.worker import run_worker

    if not _prefect_api_url():
        # Without a server Prefect would run an ephemeral one inside this process: no scheduler,
        # no cancellations, nothing shared with other workers.
        print("error: set PREFECT_API_URL to your Prefect server (or use `campaigns serve`)", file=sys.stderr)
        return 1

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_worker(settings, runs=not args.no_runs))
    return 0


def build_api(settings: Settings) -> Any:
    """The API with the Prefect launcher (what `api` and `serve` run)."""
    from api.app import create_app
    from core.launcher import NullLauncher
    from flows.launcher import PrefectLauncher
    from flows.schedules import PrefectScheduler

    if not _prefect_api_url():
        logging.getLogger("campaigns.api").warning(
            "PREFECT_API_URL is not set: campaigns stay draft until a worker's reconciler starts them"
        )
        return create_app(settings, launcher=NullLauncher())
    return create_app(settings, launcher=PrefectLauncher(), scheduler=PrefectScheduler())


def api_app() -> Any:
    """The app factory each `campaigns api --workers N` process calls."""
    settings = get_settings()
    configure_logging(settings)
    app = build_api(settings)
    configure_logging(settings)  # again: importing Prefect gave uvicorn's loggers its own handler
    return app


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    migrate(settings)
    workers = args.workers or settings.api.workers
    # log_config=None: uvicorn keeps its hands off logging, and its loggers (the access log
    # too) propagate to the handler configure_logging put on the root, in our format.
    if workers == 1:
        app = build_api(settings)
        configure_logging(settings)  # again: importing Prefect gave uvicorn's loggers a handler
        uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=True)
        return 0
    # Each process builds the app from the environment; tell them how many share the limits.
    os.environ["CAMPAIGNS_API__WORKERS"] = str(workers)
    uvicorn.run(
        "deployments.cli:api_app",
        factory=True,
        workers=workers,
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=True,
    )
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from deployments.stack import Stack, StackError

    stack = Stack(settings)
    stopping = False

    def _stop(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    try:
        stack.lock.acquire()
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        migrate(settings)
        stack.start_prefect()
        stack.start_worker()
        stack.start_api(args.host, args.port)
        print(f"campaigns API on http://{args.host}:{args.port}  (docs: /docs)", flush=True)
        print(f"Prefect UI on {stack.prefect_ui}", flush=True)
        while not stopping:
            stack.check_children()
            time.sleep(0.5)
        print("stopping…", flush=True)
        return 0
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.stop()


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from deployments.demo import run_demo

    return run_demo(settings, contacts=args.contacts)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="campaigns", description=__doc__ or None)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="everything on one machine: Prefect server, worker, API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="serve the send-campaign and launch-campaign deployments")
    p.add_argument(
        "--no-runs",
        action="store_true",
        help="only the reconciler and event webhook delivery (Prefect work-pool workers run the "
        "flows of deployments/prefect.yaml)",
    )
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("api", help="only the HTTP API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="API processes (default CAMPAIGNS_API__WORKERS or 1); e.g. the number of cores",
    )
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("demo", help="run a sandbox campaign end to end and show it")
    p.add_argument("--contacts", type=int, default=500)
    p.set_defaults(func=cmd_demo)

    accounts = sub.add_parser("accounts").add_subparsers(dest="sub", required=True)
    p = accounts.add_parser("create", help="create an account and print its API key")
    p.add_argument("name")
    p.add_argument("--credits", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_accounts_create)

    keys = sub.add_parser("keys", help="API keys of an account").add_subparsers(dest="sub", required=True)
    p = keys.add_parser("create", help="issue a new API key for an account (shown once)")
    p.add_argument("account_id")
    p.add_argument("--name", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_keys_create)
    p = keys.add_parser("list", help="an account's API keys (never the keys themselves)")
    p.add_argument("account_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_keys_list)
    p = keys.add_parser("revoke", help="revoke an API key (refused within CAMPAIGNS_API__KEY_CACHE_S)")
    p.add_argument("key_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_keys_revoke)

    credits = sub.add_parser("credits").add_subparsers(dest="sub", required=True)
    p = credits.add_parser("add", help="top up an account")
    p.add_argument("account_id")
    p.add_argument("amount", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_credits_add)

    senders = sub.add_parser("sender-ids").add_subparsers(dest="sub", required=True)
    p = senders.add_parser("add", help="register a sender ID for an account")
    p.add_argument("account_id")
    p.add_argument("--channel", required=True, choices=["sms", "whatsapp", "telegram", "email", "slack"])
    p.add_argument("--value", required=True)
    p.add_argument("--approved", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sender_ids_add)
    for verb, status in (("approve", "approved"), ("reject", "rejected")):
        p = senders.add_parser(verb, help=f"mark a sender ID {status}")
        p.add_argument("sender_id")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=_set_sender_status(status))

    contacts_cmd = sub.add_parser("contacts").add_subparsers(dest="sub", required=True)
    p = contacts_cmd.add_parser("import", help="bulk import (upsert by phone) from a CSV file")
    p.add_argument("file")
    p.add_argument("--account", required=True)
    p.add_argument("--list", default=None, help="also add every imported contact to this list")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_contacts_import)

    db = sub.add_parser("db").add_subparsers(dest="sub", required=True)
    p = db.add_parser("upgrade", help="create or migrate the database schema")
    p.set_defaults(func=cmd_db_upgrade)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `campaigns` console script."""
    args = _parser().parse_args(argv)
    settings = get_settings()
    configure_logging(settings)  # before anything imports Prefect, which then leaves the root alone
    try:
        return int(args.func(args, settings))
    except DomainError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"error": exc.code, "message": exc.message, "details": exc.details}))
        else:
            print(f"error: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
