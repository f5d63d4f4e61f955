"""Event webhook delivery (SPEC §9) against a real receiver on 127.0.0.1: signed, retried with
backoff, in order per campaign, across restarts; private targets refused unless allowed."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from core import campaigns, lifecycle, webhooks
from core.db import dispose_engines, make_engine, session_scope
from core.settings import Settings, WebhooksSettings
from core.timeutil import utcnow
from core.webhook_delivery import (
    SIGNATURE_HEADER,
    Outcome,
    backoff_s,
    claim,
    deliver_due,
    deliver_forever,
    due_rows,
    lease_s,
    new_client,
    record,
    refusal,
    sign,
)
from models import WebhookDelivery
from models.schemas import CampaignCreate
from tests.factories import Tenant, make_tenant, start_campaign

FAST = {"allow_private": True, "max_backoff_s": 0.05, "timeout_s": 2.0, "poll_interval_s": 0.05}


class Receiver:
    """An HTTP server on 127.0.0.1 that records every POST and answers `respond(payload)`."""

    def __init__(self, respond: Callable[[dict[str, Any]], int] = lambda _p: 200, delay_s: float = 0) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.respond = respond
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers.items()), body))
                time.sleep(delay_s)
                self.send_response(receiver.respond(json.loads(body)))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks?x=1"

    @property
    def event_ids(self) -> list[str]:
        return [json.loads(body)["id"] for _h, body in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def failing(times: int, campaign_id: str | None = None) -> Callable[[dict[str, Any]], int]:
    """500 for the first `times` requests (of one campaign's events, if given), then 200."""
    left = [times]

    def respond(payload: dict[str, Any]) -> int:
        if left[0] > 0 and campaign_id in (None, payload["data"]["campaign"]["id"]):
            left[0] -= 1
            return 500
        return 200

    return respond


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(failing(2))
    yield r
    r.close()


def _endpoint(engine: Engine, url: str) -> tuple[Tenant, str]:
    tenant = make_tenant(engine, contacts_n=2)
    with session_scope(engine) as session:
        endpoint = webhooks.create_endpoint(
            session,
            account_id=tenant.account_id,
            url=url,
            events=[webhooks.EventType.campaign_status_changed],
            allow_private=True,
        )
    return tenant, endpoint.secret


def _campaign_with_three_events(engine: Engine, tenant: Tenant) -> str:
    with session_scope(engine) as session:
        cid = campaigns.create_campaign(
            session,
            account_id=tenant.account_id,
            data=CampaignCreate(
                name="x", channel="sms", contact_list_id=tenant.list_id, sender_id=tenant.sender, body="Hi"
            ),
        ).id
    start_campaign(engine, cid)  # → processing
    with session_scope(engine) as session:
        lifecycle.pause(session, campaign=lifecycle.load(session, cid))
    with session_scope(engine) as session:
        lifecycle.resume(session, campaign=lifecycle.load(session, cid))
    return cid


def _rows(engine: Engine) -> list[WebhookDelivery]:
    with session_scope(engine) as session:
        return list(session.execute(select(WebhookDelivery).order_by(WebhookDelivery.id)).scalars())


async def _deliver_all(engine: Engine, settings: WebhooksSettings, *, within_s: float = 10) -> None:
    deadline = time.monotonic() + within_s
    async with new_client(settings) as client:
        while any(r.delivered_at is None and r.failed_at is None for r in _rows(engine)):
            assert time.monotonic() < deadline, "not delivered in time"
            await deliver_due(engine, settings, client)
            await asyncio.sleep(0.02)


def _readme_verify() -> Callable[[str, str, bytes], bool]:
    """The README's verification snippet, run as a receiver would run it."""
    section = (Path(__file__).resolve().parents[2] / "README.md").read_text().split("## Event webhooks", 1)[1]
    namespace: dict[str, Any] = {}
    exec(section.split("```python\n", 1)[1].split("```", 1)[0], namespace)
    return namespace["verify"]  # type: ignore[no-any-return]


verify = _readme_verify()


async def test_retried_through_two_failures_signed_and_in_order(engine: Engine, receiver: Receiver) -> None:
    tenant, secret = _endpoint(engine, receiver.url)
    cid = _campaign_with_three_events(engine, tenant)
    await _deliver_all(engine, WebhooksSettings(**FAST))

    rows = _rows(engine)
    first, second, third = (r.event_id for r in rows)
    # The first event three times (same evt_ id); the others only after it got through.
    assert receiver.event_ids == [first, first, first, second, third]
    payloads = [json.loads(body) for _h, body in receiver.requests]
    assert [p["data"]["campaign"]["status"] for p in payloads[2:]] == ["processing", "paused", "processing"]
    assert {p["data"]["campaign"]["id"] for p in payloads} == {cid}
    for (_headers, body), row in zip(receiver.requests[2:], rows, strict=True):
        assert body == row.payload.encode()  # exactly the stored text
    for headers, body in receiver.requests:
        assert verify(secret, headers[SIGNATURE_HEADER], body)
        assert not verify("whsec_wrong", headers[SIGNATURE_HEADER], body)
        assert headers["Content-Type"] == "application/json"
        assert headers["User-Agent"].startswith("campaigns-webhooks/")
    assert [r.attempts for r in rows] == [3, 1, 1]
    assert all(r.delivered_at is not None and r.last_error is None for r in rows)


async def test_one_campaign_failing_does_not_hold_up_another(engine: Engine, receiver: Receiver) -> None:
    tenant, _secret = _endpoint(engine, receiver.url)
    stuck = _campaign_with_three_events(engine, tenant)
    free = _campaign_with_three_events(engine, tenant)
    receiver.respond = failing(1000, stuck)
    settings = WebhooksSettings(**FAST)
    async with new_client(settings) as client:
        for _ in range(8):
            await deliver_due(engine, settings, client)
            await asyncio.sleep(0.06)
    by_campaign = {cid: [r for r in _rows(engine) if r.campaign_id == cid] for cid in (stuck, free)}
    assert [r.delivered_at is not None for r in by_campaign[free]] == [True] * 3
    assert [r.attempts for r in by_campaign[stuck]] == [8, 0, 0]  # its later events wait their turn
    assert {json.loads(b)["id"] for _h, b in receiver.requests} == {
        *(r.event_id for r in by_campaign[free]),
        by_campaign[stuck][0].event_id,
    }
    assert by_campaign[stuck][0].last_error == "HTTP 500"


async def test_retries_back_off_and_give_up_after_retry_for_s(engine: Engine, receiver: Receiver) -> None:
    tenant, _secret = _endpoint(engine, receiver.url)
    _campaign_with_three_events(engine, tenant)
    receiver.respond = failing(1)
    clock = [utcnow()]
    settings = WebhooksSettings(allow_private=True, max_backoff_s=3600, retry_for_s=60)
    async with new_client(settings) as client:
        assert await deliver_due(engine, settings, client, now=lambda: clock[0], rng=lambda: 0.5) == 1
        first = _rows(engine)[0]
        assert (first.attempts, first.last_error) == (1, "HTTP 500")
        assert first.next_attempt_at - clock[0] == timedelta(seconds=5)  # 5 s, then 10, 20, ...
        clock[0] += timedelta(seconds=4)
        assert await deliver_due(engine, settings, client, now=lambda: clock[0]) == 0  # not yet
        receiver.respond = failing(1000)
        clock[0] += timedelta(seconds=1)
        await deliver_due(engine, settings, client, now=lambda: clock[0], rng=lambda: 0.5)
        assert _rows(engine)[0].next_attempt_at - clock[0] == timedelta(seconds=10)
        clock[0] += timedelta(seconds=60)  # past created_at + retry_for_s: this try is the last
        await deliver_due(engine, settings, client, now=lambda: clock[0])
        given_up = _rows(engine)[0]
        assert given_up.failed_at is not None and given_up.attempts == 3
        # Given up, it no longer holds up the campaign's next event.
        receiver.respond = failing(0)
        assert await deliver_due(engine, settings, client, now=lambda: clock[0]) == 1
    assert _rows(engine)[1].delivered_at is not None


def test_backoff_numbers() -> None:
    assert [backoff_s(n, 3600, rng=lambda: 0.5) for n in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert backoff_s(30, 3600) == 3600  # capped
    assert 4.0 <= backoff_s(1, 3600, rng=lambda: 0.0) <= backoff_s(1, 3600, rng=lambda: 0.999) <= 6.0


async def test_a_timeout_is_retried(engine: Engine) -> None:
    slow = Receiver(delay_s=1.0)
    try:
        tenant, _secret = _endpoint(engine, slow.url)
        _campaign_with_three_events(engine, tenant)
        settings = WebhooksSettings(allow_private=True, timeout_s=0.2)
        async with new_client(settings) as client:
            await deliver_due(engine, settings, client)
        row = _rows(engine)[0]
        assert (row.attempts, row.last_error, row.delivered_at, row.failed_at) == (1, "timeout", None, None)
    finally:
        slow.close()


def test_a_second_worker_cannot_claim_what_the_first_holds(db: Engine) -> None:
    tenant, _secret = _endpoint(db, "https://hooks.example.com/")
    cid = _campaign_with_three_events(db, tenant)
    with session_scope(db) as session:
        mine = set(
            session.execute(select(WebhookDelivery.id).where(WebhookDelivery.campaign_id == cid)).scalars()
        )

    def due(now: datetime) -> list[tuple[int, datetime]]:
        with session_scope(db) as session:  # (the PostgreSQL database is shared with other tests)
            return [r for r in due_rows(session, now=now, limit=10_000) if r[0] in mine]

    now = utcnow()
    seen = due(now)
    assert [r[0] for r in seen] == [min(mine)]  # the campaign's first event only: the others wait
    with session_scope(db) as session:
        [held] = claim(session, seen, now=now, lease=30)
    with session_scope(db) as session:  # what another worker read at the same moment
        assert claim(session, seen, now=now, lease=30) == []
    assert due(now) == [] and due(now + timedelta(seconds=31)) != []  # leased, then due again
    settings = WebhooksSettings(max_backoff_s=0.5)
    with session_scope(db) as session:
        record(session, Outcome(held, "HTTP 503"), now=now, settings=settings, rng=lambda: 0.5)
        record(
            session, Outcome(held, "HTTP 502"), now=now, settings=settings, rng=lambda: 0.5
        )  # not ours now
    with session_scope(db) as session:
        row = session.get(WebhookDelivery, held.id)
    assert (row.attempts, row.last_error) == (1, "HTTP 503")
    assert row.next_attempt_at == now + timedelta(seconds=0.5)
    assert [r[0] for r in due(now + timedelta(seconds=1))] == [held.id]


def test_pending_rows_survive_a_restart(settings: Settings, receiver: Receiver) -> None:
    """A worker fails one try and dies holding a claim on the next; a new process delivers all."""
    live = settings.model_copy(update={"webhooks": WebhooksSettings(**FAST)})
    engine = make_engine(live.resolved_database_url())
    tenant, _secret = _endpoint(engine, receiver.url)
    _campaign_with_three_events(engine, tenant)
    receiver.respond = failing(1)

    async def first_life() -> None:
        async with new_client(live.webhooks) as client:
            await deliver_due(engine, live.webhooks, client)  # 500
        await asyncio.sleep(0.1)
        with session_scope(engine) as session:  # claimed, then killed before sending
            later = utcnow()
            assert len(claim(session, due_rows(session, now=later), now=later, lease=0.5)) == 1

    asyncio.run(first_life())
    engine.dispose()
    dispose_engines()
    assert len(receiver.requests) == 1

    async def second_life() -> None:
        worker = asyncio.create_task(deliver_forever(live))
        try:
            deadline = time.monotonic() + 10
            fresh = make_engine(live.resolved_database_url())
            while not all(r.delivered_at for r in _rows(fresh)):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            fresh.dispose()
        finally:
            worker.cancel()
            with pytest.raises(asyncio.CancelledError):
                await worker

    asyncio.run(second_life())
    dispose_engines()
    rows = _rows(make_engine(live.resolved_database_url()))
    assert [r.attempts for r in rows] == [2, 1, 1]
    assert receiver.event_ids == [rows[0].event_id, *(r.event_id for r in rows)]


async def test_private_targets_are_refused_unless_allowed(engine: Engine, receiver: Receiver) -> None:
    tenant, _secret = _endpoint(engine, receiver.url)
    _campaign_with_three_events(engine, tenant)
    strict = WebhooksSettings(**{**FAST, "allow_private": False})
    async with new_client(strict) as client:
        await deliver_due(engine, strict, client)
    refused = _rows(engine)[0]
    assert refused.failed_at is not None and refused.last_error.startswith("refused")
    assert receiver.requests == []


@pytest.mark.parametrize(
    ("answers", "refused"),
    [
        (["93.184.216.34"], None),
        (["10.1.2.3"], ("refused", True)),
        (["93.184.216.34", "127.0.0.1"], ("refused", True)),
        (["fe80::1%eth0"], ("refused", True)),
        (["::ffff:192.168.1.1"], ("refused", True)),
        ([], ("refused", True)),
        (OSError("no such host"), ("could not resolve", False)),
    ],
)
async def test_the_host_is_resolved_before_each_try(
    answers: list[str] | OSError, refused: tuple[str, bool] | None
) -> None:
    async def resolver(host: str, port: int) -> list[str]:
        assert (host, port) == ("hooks.example.test", 443)
        if isinstance(answers, OSError):
            raise answers
        return answers

    got = await refusal("https://hooks.example.test/in", resolver)
    if refused is None:
        assert got is None
    else:
        assert got is not None and got[0].startswith(refused[0]) and got[1] is refused[1]
    for literal in ("http://localhost:9/", "http://127.0.0.1/", "http://[::1]/", "http://169.254.169.254/"):
        assert (await refusal(literal, resolver))[1] is True  # refused without asking DNS


def test_the_signature_is_stripe_style() -> None:
    body = b'{"id":"evt_1"}'
    header = sign("whsec_k", body, 1700000000)
    mac = hmac.new(b"whsec_k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={mac}"
    fresh = sign("whsec_k", body, int(time.time()))
    assert verify("whsec_k", fresh, body) and not verify("whsec_k", fresh, body + b" ")
    assert not verify("whsec_k", header, body)  # too old: a replay
    assert not verify("whsec_k", "garbage", body) and not verify("whsec_k", "t=x,v1=y", body)


def test_the_lease_outlasts_a_try() -> None:
    settings = WebhooksSettings(timeout_s=10)
    assert lease_s(settings) > 2 * settings.timeout_s


async def test_an_unexpected_error_is_recorded_not_left_leased(engine: Engine) -> None:
    tenant, _secret = _endpoint(engine, "https://hooks.example.test/in")
    _campaign_with_three_events(engine, tenant)

    async def broken(_host: str, _port: int) -> list[str]:
        raise RuntimeError("a bug")

    strict = WebhooksSettings(allow_private=False, max_backoff_s=0.05)
    async with new_client(strict) as client:
        assert await deliver_due(engine, strict, client, resolver=broken) == 1
    row = _rows(engine)[0]
    assert (row.attempts, row.last_error, row.failed_at) == (1, "internal error (RuntimeError)", None)


def test_old_delivered_and_given_up_rows_are_pruned(engine: Engine) -> None:
    from datetime import timedelta

    from core.db import session_scope
    from core.timeutil import utcnow
    from core.webhook_delivery import prune
    from models import WebhookDelivery

    now = utcnow()
    old, recent = now - timedelta(days=8), now - timedelta(days=1)

    def row(i: int, **kw: object) -> WebhookDelivery:
        base: dict[str, object] = dict(
            event_id=f"evt_{i}",
            endpoint_id="whe_x",
            account_id="acc_x",
            type="campaign.status_changed",
            payload="{}",
            created_at=old,
            next_attempt_at=old,
        )
        return WebhookDelivery(**{**base, **kw})  # type: ignore[arg-type]

    with session_scope(engine) as s:
        s.add_all([row(1, delivered_at=old), row(2, failed_at=old), row(3, delivered_at=recent), row(4)])
    with session_scope(engine) as s:
        assert prune(s, before=now - timedelta(days=7)) == 2
    with session_scope(engine) as s:
        assert sorted(r.event_id for r in s.query(WebhookDelivery)) == ["evt_3", "evt_4"]


async def test_a_campaigns_backlog_drains_in_one_pass_in_order(engine: Engine) -> None:
    """Found in review: each pass sent one event per (endpoint, campaign), so 20,000 failed
    messages of one campaign took 20,000 passes. Now a pass follows the line after each delivery."""
    ok = Receiver()
    try:
        tenant, _secret = _endpoint(engine, ok.url)
        cids = [_campaign_with_three_events(engine, tenant) for _ in range(2)]
        settings = WebhooksSettings(**FAST)
        async with new_client(settings) as client:
            await deliver_due(engine, settings, client)
        assert all(r.delivered_at is not None for r in _rows(engine))
        by_campaign: dict[str, list[str]] = {}
        for _h, body in ok.requests:
            event = json.loads(body)
            by_campaign.setdefault(event["data"]["campaign"]["id"], []).append(
                event["data"]["campaign"]["status"]
            )
        assert {c: by_campaign[c] for c in cids} == {c: ["processing", "paused", "processing"] for c in cids}
    finally:
        ok.close()
