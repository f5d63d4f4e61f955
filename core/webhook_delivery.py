"""Event webhook delivery (SPEC §9): every worker runs `deliver_forever`, an asyncio task of
its own with its own HTTP client beside the reconciler, so sending campaigns never waits for it.
Everything it knows is in the outbox (`webhook_deliveries`), so a restart loses nothing.

- Claims: a due row is taken by moving its `next_attempt_at` a lease ahead, guarded by the value
  read (`UPDATE … WHERE id = ? AND next_attempt_at = <read>`): of several workers one wins. A
  worker that dies mid-send leaves the row due again when the lease ends: a repeat, never a loss.
- Order: a row is not due while an earlier (lower id) row of the same endpoint and campaign is
  neither delivered nor given up, so an endpoint receives each campaign's events in order.
- Retries: a non-2xx answer (redirects are not followed), a timeout or a connection error is
  tried again after 5 s·2^(n-1) ±20 % (at most `max_backoff_s`, by default 1 h) until
  `retry_for_s` (3 days) after the event, then given up (`failed_at`, with `last_error`).
- Targets: unless `allow_private`, the host is resolved before each attempt and a loopback,
  private or link-local answer gives the delivery up at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import httpx
from sqlalchemy import Engine, delete, func, select, update
from sqlmodel import Session, col

from core.db import get_engine, get_read_engine, in_session
from core.settings import Settings, WebhooksSettings
from core.timeutil import as_utc, utcnow
from core.webhooks import literal_private_host, private_address
from models import WebhookDelivery, WebhookEndpoint

log = logging.getLogger("campaigns.webhooks")

SIGNATURE_HEADER = "X-Campaigns-Signature"
USER_AGENT = "campaigns-webhooks/0.1"
FIRST_RETRY_S = 5.0
JITTER = 0.2
# Lines (endpoint, campaign) started per pass, one request in flight each: no claimed row
# waits for a free slot, so a claim never outlives its lease before its attempt starts.
CONCURRENCY = 16
BATCH = CONCURRENCY
# After a delivery, the next event of the same line is sent in the same pass, up to this many:
# a backlog of one campaign drains at the receiver's pace, not one event per pass.
FOLLOW = 200

Clock = Callable[[], datetime]
Resolver = Callable[[str, int], Awaitable[list[str]]]


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The X-Campaigns-Signature value: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def backoff_s(attempts: int, cap: float, rng: Callable[[], float] = random.random) -> float:
    """Seconds before try `attempts + 1`: 5 s doubling per try, ±20 % jitter, at most `cap`."""
    base = FIRST_RETRY_S * 2 ** min(attempts - 1, 32)
    return min(cap, base * (1 - JITTER + 2 * JITTER * rng()))


def lease_s(settings: WebhooksSettings) -> float:
    """How long a claim holds a row: an attempt (resolution + request) is cut at timeout_s."""
    return 2 * settings.timeout_s + 30


@dataclass(frozen=True)
class Due:
    """A claimed row with what sending it needs."""

    id: int
    endpoint_id: str
    campaign_id: str | None
    url: str | None  # None: the endpoint was deleted
    secret: str
    payload: str
    created_at: datetime
    attempts: int
    lease: datetime  # the next_attempt_at our claim set


@dataclass(frozen=True)
class Outcome:
    due: Due
    error: str | None = None  # None: delivered
    give_up: bool = False


# -- the outbox side (each a short transaction) --


def due_rows(session: Session, *, now: datetime, limit: int = BATCH) -> list[tuple[int, datetime]]:
    """(id, next_attempt_at) of the rows due now that are first in line for their endpoint and
    campaign. Heads are found among the pending rows only, so the cost follows the backlog,
    not the history of delivered events."""
    d = WebhookDelivery
    pending = (col(d.delivered_at).is_(None), col(d.failed_at).is_(None))
    heads = (
        select(func.min(col(d.id)).label("head"))
        .where(*pending)
        .group_by(col(d.endpoint_id), col(d.campaign_id))
        .subquery()
    )
    rows = session.execute(
        select(col(d.id), col(d.next_attempt_at))
        .join(heads, heads.c.head == col(d.id))
        .where(col(d.next_attempt_at) <= now)
        .order_by(col(d.id))
        .limit(limit)
    ).all()
    return [(int(i), when) for i, when in rows]


def claim(session: Session, rows: list[tuple[int, datetime]], *, now: datetime, lease: float) -> list[Due]:
    """Take the rows whose next_attempt_at is still what was read; returns those won."""
    until = now + timedelta(seconds=lease)
    won = []
    for row_id, seen in rows:
        result = session.execute(
            update(WebhookDelivery)
            .where(
                col(WebhookDelivery.id) == row_id,
                col(WebhookDelivery.next_attempt_at) == seen,
                col(WebhookDelivery.delivered_at).is_(None),
                col(WebhookDelivery.failed_at).is_(None),
            )
            .values(next_attempt_at=until)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            won.append(row_id)
    if not won:
        return []
    d, e = WebhookDelivery, WebhookEndpoint
    found = session.execute(
        select(
            col(d.id),
            col(d.endpoint_id),
            col(d.campaign_id),
            col(e.url),
            col(e.secret),
            col(d.payload),
            col(d.created_at),
            col(d.attempts),
        )
        .outerjoin(e, col(e.id) == col(d.endpoint_id))
        .where(col(d.id).in_(won))
        .order_by(col(d.id))
    ).all()
    return [Due(int(r[0]), r[1], r[2], r[3], r[4] or "", r[5], r[6], int(r[7]), until) for r in found]


def next_in_line(
    session: Session, *, endpoint_id: str, campaign_id: str | None, now: datetime
) -> list[tuple[int, datetime]]:
    """The head of a line (its lowest pending row), if it is due now."""
    d = WebhookDelivery
    same_campaign = col(d.campaign_id).is_(None) if campaign_id is None else col(d.campaign_id) == campaign_id
    row = session.execute(
        select(col(d.id), col(d.next_attempt_at))
        .where(
            col(d.endpoint_id) == endpoint_id,
            same_campaign,
            col(d.delivered_at).is_(None),
            col(d.failed_at).is_(None),
        )
        .order_by(col(d.id))
        .limit(1)
    ).first()
    if row is None or as_utc(row[1]) > as_utc(now):
        return []
    return [(int(row[0]), row[1])]


def record(
    session: Session, outcome: Outcome, *, now: datetime, settings: WebhooksSettings, rng: Callable[[], float]
) -> None:
    """Store what an attempt gave: delivered, due again after a backoff, or given up."""
    due, d = outcome.due, WebhookDelivery
    if outcome.error is None:
        session.execute(
            update(d)
            .where(col(d.id) == due.id, col(d.delivered_at).is_(None))
            .values(delivered_at=now, attempts=d.attempts + 1, last_error=None)
        )
        return
    deadline = as_utc(due.created_at) + timedelta(seconds=settings.retry_for_s)
    values: dict[str, object] = {"attempts": d.attempts + 1, "last_error": outcome.error[:200]}
    if outcome.give_up or now >= deadline:
        values["failed_at"] = now
    else:
        wait = backoff_s(due.attempts + 1, settings.max_backoff_s, rng)
        values["next_attempt_at"] = min(now + timedelta(seconds=wait), deadline)
    session.execute(
        update(d)
        .where(
            col(d.id) == due.id,
            col(d.next_attempt_at) == due.lease,  # still our claim
            col(d.delivered_at).is_(None),
            col(d.failed_at).is_(None),
        )
        .values(**values)
    )
    if "failed_at" in values:
        log.warning(
            "webhook delivery %s given up after %s tries: %s", due.id, due.attempts + 1, outcome.error
        )


# -- the HTTP side --


async def resolve(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def refusal(url: str, resolver: Resolver = resolve) -> tuple[str, bool] | None:
    """Why this URL must not be called, and whether that is final, or None: a private target
    is given up, a host that does not resolve is tried again later."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    private = "refused: the host is (or resolves to) a loopback, private or link-local address"
    if literal_private_host(host):
        return private, True
    try:
        addresses = await resolver(host, parts.port or (443 if parts.scheme == "https" else 80))
    except UnicodeError:
        return "invalid host name", True
    except OSError:
        return "could not resolve the host", False
    if not addresses or any(private_address(a.split("%")[0]) for a in addresses):
        return private, True
    return None


async def attempt(
    client: httpx.AsyncClient,
    due: Due,
    *,
    settings: WebhooksSettings,
    now: Clock = utcnow,
    resolver: Resolver = resolve,
) -> Outcome:
    """One signed POST of a claimed row (the whole try cut at timeout_s)."""
    if due.url is None:
        return Outcome(due, "endpoint deleted", give_up=True)
    try:
        async with asyncio.timeout(settings.timeout_s):
            if not settings.allow_private:
                refused = await refusal(due.url, resolver)
                if refused is not None:
                    return Outcome(due, *refused)
            body = due.payload.encode()
            headers = {
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                SIGNATURE_HEADER: sign(due.secret, body, int(now().timestamp())),
            }
            async with client.stream("POST", due.url, content=body, headers=headers) as response:
                status = response.status_code
    except (TimeoutError, httpx.TimeoutException):
        return Outcome(due, "timeout")
    except httpx.InvalidURL:
        return Outcome(due, "invalid url", give_up=True)
    except httpx.HTTPError as exc:
        return Outcome(due, f"connection failed ({type(exc).__name__})")
    except Exception as exc:  # a bug must not leave the row leased and retried forever
        log.exception("webhook delivery %s: unexpected error", due.id)
        return Outcome(due, f"internal error ({type(exc).__name__})")
    return Outcome(due) if 200 <= status < 300 else Outcome(due, f"HTTP {status}")


async def deliver_due(
    engine: Engine,
    settings: WebhooksSettings,
    client: httpx.AsyncClient,
    *,
    read_engine: Engine | None = None,
    now: Clock = utcnow,
    resolver: Resolver = resolve,
    rng: Callable[[], float] = random.random,
) -> int:
    """One pass: claim what is due, send it, record each outcome; returns rows claimed."""
    rows = await in_session(read_engine or engine, due_rows, now=now())
    if not rows:
        return 0
    claimed = await in_session(engine, claim, rows, now=now(), lease=lease_s(settings))

    async def _one(due: Due) -> None:
        for _ in range(FOLLOW):
            outcome = await attempt(client, due, settings=settings, now=now, resolver=resolver)
            # Recorded at once: the campaign's next event waits for this one only.
            await in_session(engine, record, outcome, now=now(), settings=settings, rng=rng)
            if outcome.error is not None:
                return
            head = await in_session(
                engine, next_in_line, endpoint_id=due.endpoint_id, campaign_id=due.campaign_id, now=now()
            )
            follow = await in_session(engine, claim, head, now=now(), lease=lease_s(settings)) if head else []
            if not follow:
                return
            due = follow[0]

    for failure in await asyncio.gather(*(_one(due) for due in claimed), return_exceptions=True):
        if isinstance(failure, BaseException):  # e.g. the database went away: said once, after all
            raise failure
    return len(claimed)


PRUNE_EVERY_S = 3600.0


def prune(session: Session, *, before: datetime) -> int:
    """Delete outbox rows delivered or given up before `before`; returns how many."""
    result = session.execute(
        delete(WebhookDelivery).where(
            (col(WebhookDelivery.delivered_at) < before) | (col(WebhookDelivery.failed_at) < before)
        )
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def new_client(settings: WebhooksSettings) -> httpx.AsyncClient:
    """The delivery client: explicit timeouts and limits, no redirects, no proxy from the
    environment (the address check is about the real target)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(settings.timeout_s),
        limits=httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY),
        follow_redirects=False,
        trust_env=False,
    )


async def deliver_forever(settings: Settings, *, client: httpx.AsyncClient | None = None) -> None:
    """Deliver the outbox until cancelled; a pass that found nothing sleeps poll_interval_s."""
    engine, read_engine = get_engine(settings), get_read_engine(settings)
    async with contextlib.AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(new_client(settings.webhooks))
        pruned_at = 0.0
        while True:
            if asyncio.get_running_loop().time() - pruned_at > PRUNE_EVERY_S:
                pruned_at = asyncio.get_running_loop().time()
                try:
                    before = utcnow() - timedelta(seconds=settings.webhooks.keep_s)
                    await in_session(engine, prune, before=before)
                except Exception:
                    log.exception("pruning the webhook outbox failed")
            try:
                busy = await deliver_due(engine, settings.webhooks, client, read_engine=read_engine)
            except Exception:  # the database may be away for a moment; the outbox keeps
                log.exception("webhook delivery pass failed")
                busy = 0
            if not busy:
                await asyncio.sleep(settings.webhooks.poll_interval_s)
