"""`campaigns demo`: start what is needed, run one sandbox campaign through the HTTP API with a
live progress bar, print the summary and the Prefect UI link."""

from __future__ import annotations

import time
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from core import accounts, contacts, sender_ids
from core.db import get_engine, migrate, session_scope
from core.settings import Settings
from deployments.stack import Stack, StackError, free_port
from models.schemas import ContactCreate

FINAL = {"completed", "failed", "cancelled"}


def _bootstrap(settings: Settings, n: int) -> dict[str, str]:
    """A demo account with credits, an approved sender ID and a list of `n` contacts."""
    migrate(settings)
    with session_scope(get_engine(settings)) as session:
        new = accounts.create_account(session, name="Demo shop", credits_amount=10 * n + 100)
        lst = contacts.create_list(session, account_id=new.account_id, name="Demo customers")
        sender_ids.register(
            session, account_id=new.account_id, channel="sms", value="DEMOSHOP", approved=True
        )
        first_names = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken"]
        for i in range(n):
            # One recipient uses the sandbox's invalid test number, to show a permanent failure.
            phone = "+15005550001" if i == n - 1 else f"+1415{5550000 + i:07d}"
            contacts.create_contact(
                session,
                account_id=new.account_id,
                data=ContactCreate(
                    name=f"{first_names[i % len(first_names)]} Demo{i}",
                    phone=phone,
                    attributes={"code": f"SALE{i % 100:02d}"},
                    lists=[lst.id],
                ),
            )
        return {"api_key": new.api_key, "list_id": lst.id, "account_id": new.account_id}


def run_demo(settings: Settings, *, contacts: int = 500) -> int:
    """Run the demo; exit code 0 when the campaign completed."""
    console = Console()
    stack = Stack(settings, quiet=True)
    try:
        stack.lock.acquire()
        with console.status("starting the Prefect server, a worker and the API…"):
            stack.start_prefect()
            stack.start_worker()
            port = free_port(8000)
            stack.start_api("127.0.0.1", port)
        console.print(f"[green]✓[/] Prefect UI {stack.prefect_ui}   API http://127.0.0.1:{port}")
        demo = _bootstrap(settings, contacts)
        console.print(f"[green]✓[/] demo account {demo['account_id']} with {contacts} contacts")
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {demo['api_key']}"},
            timeout=30,
        ) as api:
            created = api.post(
                "/v1/campaigns",
                json={
                    "name": "Weekend Sale - demo",
                    "channel": "sms",
                    "contact_list_id": demo["list_id"],
                    "sender_id": "DEMOSHOP",
                    "body": "Hi {{first_name}}, 20% off this weekend with code {{attributes.code}}!",
                },
            )
            if created.status_code != 201:
                console.print(f"[red]campaign creation failed:[/] {created.text}")
                return 1
            campaign = _follow(console, api, stack, created.json())
        _summary(console, campaign, stack.prefect_ui)
        return 0 if campaign["status"] == "completed" else 1
    except StackError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    finally:
        with console.status("stopping…"):
            stack.stop()


def _follow(console: Console, api: httpx.Client, stack: Stack, campaign: dict[str, Any]) -> dict[str, Any]:
    total = max(campaign["total_recipients"], 1)
    columns = (
        TextColumn("[bold]{task.fields[status]:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("delivered {task.fields[delivered]}  failed {task.fields[failed]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("campaign", total=total, status=campaign["status"], delivered=0, failed=0)
        deadline = time.monotonic() + 600
        while campaign["status"] not in FINAL and time.monotonic() < deadline:
            time.sleep(0.5)
            stack.check_children()
            campaign = api.get(f"/v1/campaigns/{campaign['id']}").json()
            done = campaign["delivered_count"] + campaign["failed_count"]
            progress.update(
                bar,
                completed=done,
                total=max(campaign["total_recipients"], 1),
                status=campaign["status"],
                delivered=campaign["delivered_count"],
                failed=campaign["failed_count"],
            )
    return campaign


def _summary(console: Console, campaign: dict[str, Any], ui: str | None) -> None:
    table = Table(title=f"Campaign {campaign['id']}", show_header=False)
    for key in (
        "name",
        "status",
        "channel",
        "total_recipients",
        "delivered_count",
        "failed_count",
        "skipped_count",
        "credits_used",
        "started_at",
        "completed_at",
        "failure_reason",
    ):
        if campaign.get(key) is not None:
            table.add_row(key, str(campaign[key]))
    console.print(table)
    if ui and campaign.get("flow_run_id"):
        console.print(f"Flow run in the Prefect UI: {ui}/runs/flow-run/{campaign['flow_run_id']}")
