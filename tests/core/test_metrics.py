"""Metrics: counted in the database at scrape time, or added up in memory per process and
flushed into `metric_counters`; the collector's output parsed as Prometheus would."""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, insert, select, update

from channels.base import (
    OutboundMessage,
    PermanentSendError,
    ProviderConfigError,
    SendResult,
    TransientSendError,
    UnknownOutcomeError,
)
from core import campaigns, metrics
from core.db import make_engine, session_scope
from core.delivery import MeteredChannel
from core.metrics import Accumulator, canonical_labels
from core.sender import send_chunk
from core.settings import Settings
from models import Message
from models.schemas import CampaignCreate
from models.tables import MetricCounter
from tests.factories import make_tenant, start_campaign
from tests.fakes import FakeChannel


def scrape(engine: Engine) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the collector's text output: (sample name, labels) -> value."""
    text = generate_latest(metrics.registry_for(engine)).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def _campaign(engine: Engine, n: int = 3) -> str:
    tenant = make_tenant(engine, contacts_n=n)
    with session_scope(engine) as session:
        cid = campaigns.create_campaign(
            session,
            account_id=tenant.account_id,
            data=CampaignCreate(
                name="x", channel="sms", contact_list_id=tenant.list_id, sender_id=tenant.sender, body="Hi"
            ),
        ).id
    start_campaign(engine, cid)
    return cid


def test_messages_and_campaigns_are_counted_in_the_database(engine: Engine) -> None:
    cid = _campaign(engine, n=3)
    with session_scope(engine) as session:
        first = session.execute(select(Message.id).where(Message.campaign_id == cid).limit(1)).scalar_one()
        session.execute(update(Message).where(Message.id == first).values(status="delivered"))
    samples = scrape(engine)
    assert sample(samples, "campaigns_messages_total", channel="sms", status="pending") == 2
    assert sample(samples, "campaigns_messages_total", channel="sms", status="delivered") == 1
    assert sample(samples, "campaigns_messages_total", channel="email", status="sent") == 0
    assert sample(samples, "campaigns_campaigns", status="processing") == 1
    assert sample(samples, "campaigns_campaigns", status="completed") == 0


def test_counters_and_histograms_are_read_from_their_rows(engine: Engine) -> None:
    bucket = "campaigns_provider_request_seconds_bucket"
    rows = [
        ("campaigns_provider_requests_total", {"provider": "twilio", "outcome": "accepted"}, 7.0),
        ("campaigns_http_requests_total", {"method": "GET", "route": "/healthz", "status": "200"}, 3.0),
        (bucket, {"provider": "twilio", "le": "0.05"}, 4.0),  # per bucket, not cumulative
        (bucket, {"provider": "twilio", "le": "0.5"}, 2.0),
        (bucket, {"provider": "twilio", "le": "+Inf"}, 1.0),
        ("campaigns_provider_request_seconds_sum", {"provider": "twilio"}, 42.5),
    ]
    with session_scope(engine) as session:
        session.execute(
            insert(MetricCounter),
            [{"name": n, "labels": canonical_labels(labels), "value": v} for n, labels, v in rows],
        )
    samples = scrape(engine)
    assert sample(samples, "campaigns_provider_requests_total", provider="twilio", outcome="accepted") == 7
    assert sample(samples, "campaigns_http_requests_total", method="GET", route="/healthz", status="200") == 3
    assert sample(samples, bucket, provider="twilio", le="0.01") == 0
    assert sample(samples, bucket, provider="twilio", le="0.05") == 4
    assert sample(samples, bucket, provider="twilio", le="0.1") == 4
    assert sample(samples, bucket, provider="twilio", le="0.5") == 6
    assert sample(samples, bucket, provider="twilio", le="+Inf") == 7
    assert sample(samples, "campaigns_provider_request_seconds_count", provider="twilio") == 7
    assert sample(samples, "campaigns_provider_request_seconds_sum", provider="twilio") == 42.5


def test_every_family_is_exposed_even_before_anything_happened(engine: Engine) -> None:
    text = generate_latest(metrics.registry_for(engine)).decode()
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert types == {
        "campaigns_messages_total": "gauge",
        "campaigns_campaigns": "gauge",
        "campaigns_provider_requests": "counter",
        "campaigns_provider_request_seconds": "histogram",
        "campaigns_http_requests": "counter",
        "campaigns_http_request_seconds": "histogram",
    }


def test_two_processes_flushing_into_one_database_add_up(db: Engine) -> None:
    provider = f"twilio-{secrets.token_hex(4)}"  # the PostgreSQL database is shared by the session
    api_1, api_2 = Accumulator(), Accumulator()
    for _ in range(3):
        api_1.provider_request(provider, "accepted", 0.02)
    api_2.provider_request(provider, "accepted", 0.2)
    api_2.provider_request(provider, "rejected", 3.0)
    api_1.flush(db)
    api_2.flush(db)
    api_1.provider_request(provider, "accepted", 0.02)
    assert api_1.flush(db) > 0
    assert api_1.flush(db) == 0  # nothing new: nothing written twice
    samples = scrape(db)
    assert sample(samples, "campaigns_provider_requests_total", provider=provider, outcome="accepted") == 5
    assert sample(samples, "campaigns_provider_requests_total", provider=provider, outcome="rejected") == 1
    bucket = "campaigns_provider_request_seconds_bucket"
    assert sample(samples, bucket, provider=provider, le="0.025") == 4
    assert sample(samples, bucket, provider=provider, le="0.25") == 5
    assert sample(samples, bucket, provider=provider, le="+Inf") == 6
    assert sample(samples, "campaigns_provider_request_seconds_sum", provider=provider) == pytest.approx(3.28)


def test_a_failed_flush_keeps_its_deltas_for_the_next(
    engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = make_engine(f"sqlite:///{tmp_path / 'no-tables.db'}")  # no metric_counters table
    process = Accumulator()
    process.http_request("GET", "/healthz", "200", 0.001)
    with caplog.at_level(logging.WARNING, logger="campaigns.metrics"):
        assert process.try_flush(broken) is False
    assert "metrics not flushed" in caplog.text
    broken.dispose()
    process.http_request("GET", "/healthz", "200", 0.001)
    assert process.try_flush(engine) is True
    samples = scrape(engine)
    assert sample(samples, "campaigns_http_requests_total", method="GET", route="/healthz", status="200") == 2
    assert sample(samples, "campaigns_http_request_seconds_count", method="GET", route="/healthz") == 2


def test_recording_threads_each_count_without_a_lock() -> None:
    process = Accumulator()

    def record() -> None:
        for _ in range(10_000):
            process.provider_request("sandbox", "accepted", 0.0)

    threads = [threading.Thread(target=record) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert process.totals()[(metrics.PROVIDER_REQUESTS, ("sandbox", "accepted"))] == 40_000


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (None, "accepted"),
        (PermanentSendError("bad number", code="invalid_to"), "rejected"),
        (TransientSendError("429"), "retryable"),
        (UnknownOutcomeError("read timeout"), "unknown"),
        (ProviderConfigError("bad token"), "config_error"),
        (RuntimeError("bug"), "error"),
    ],
)
async def test_metered_channel_counts_each_request_by_outcome(error: Exception | None, outcome: str) -> None:
    def behaviour(_message: OutboundMessage, _attempt: int) -> SendResult | None:
        if error is not None:
            raise error
        return None

    process = Accumulator()
    channel = MeteredChannel(FakeChannel(behaviour), "twilio", process)
    message = OutboundMessage("msg_1", "cmp_1", "+14155550100", "BRAND", body="Hi")
    with pytest.raises(type(error)) if error else contextlib.nullcontext():
        await channel.send(message)
    await channel.fetch_status("p_msg_1", None)
    totals = process.totals()
    assert totals[(metrics.PROVIDER_REQUESTS, ("twilio", outcome))] == 1
    assert totals[(metrics.PROVIDER_REQUESTS, ("twilio", "lookup"))] == 1
    assert sum(v for (name, _labels), v in totals.items() if name.endswith("seconds_bucket")) == 2


async def test_a_chunk_flushes_its_provider_requests_when_it_ends(settings: Settings, engine: Engine) -> None:
    cid = _campaign(engine, n=5)
    report = await send_chunk(
        settings=settings, engine=engine, campaign_id=cid, start=0, end=5, channel=FakeChannel()
    )
    assert report.accepted == 5
    samples = scrape(engine)
    provider = settings.sms.provider
    assert sample(samples, "campaigns_provider_requests_total", provider=provider, outcome="accepted") == 5
    assert sample(samples, "campaigns_provider_request_seconds_count", provider=provider) == 5
    assert sample(samples, "campaigns_messages_total", channel="sms", status="sent") == 5
