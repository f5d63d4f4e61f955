"""Prometheus metrics that stay true when the work is spread over processes and machines.

Messages and campaigns are counted in the database at scrape time: it is the truth, whichever
process wrote it. Provider requests and HTTP requests happen in flow processes (short-lived,
maybe on other machines) and API processes, so each process adds them up in memory (a dict
increment per observation, no lock) and adds its deltas to table `metric_counters` in batches
(every FLUSH_S, at the end of a chunk, at exit). GET /metrics reads the table back through
`DatabaseCollector`. Prometheus' multiprocess mode would not do: its per-process files live on
one host, and a flow process on another machine never writes there."""

from __future__ import annotations

import atexit
import json
import logging
import threading
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import col

from models import Campaign, CampaignStatus, Channel, Message, MessageStatus
from models.tables import MetricCounter

log = logging.getLogger("campaigns.metrics")
FLUSH_S = 2.0
UPSERT_BATCH = 500
Key = tuple[str, tuple[str, ...]]  # (stored name, label values in the family's label order)


class Histogram:
    """A histogram stored as one row per bucket (not cumulative; `le` inclusive, found by
    bisect_left over `bounds`) and one `_sum` row."""

    def __init__(self, name: str, labels: tuple[str, ...], bounds: tuple[float, ...]) -> None:
        self.name, self.labels, self.bounds = name, labels, bounds
        self.les = (*(_le(b) for b in bounds), "+Inf")
        self.bucket, self.sum = name + "_bucket", name + "_sum"


def _le(bound: float) -> str:
    return repr(float(bound))


PROVIDER_REQUESTS = "campaigns_provider_requests_total"
HTTP_REQUESTS = "campaigns_http_requests_total"
# Providers answer in tens of milliseconds to seconds; the sandbox in microseconds.
PROVIDER_SECONDS = Histogram(
    "campaigns_provider_request_seconds",
    ("provider",),
    (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
# The API's own work is a millisecond or two; writes queued behind SQLite's lock take longer.
HTTP_SECONDS = Histogram(
    "campaigns_http_request_seconds",
    ("method", "route"),
    (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
# Bound once: the recording methods run per provider request and per HTTP request.
_PROVIDER_BUCKET, _PROVIDER_SUM = PROVIDER_SECONDS.bucket, PROVIDER_SECONDS.sum
_PROVIDER_LES, _PROVIDER_BOUNDS = PROVIDER_SECONDS.les, PROVIDER_SECONDS.bounds
_HTTP_BUCKET, _HTTP_SUM = HTTP_SECONDS.bucket, HTTP_SECONDS.sum
_HTTP_LES, _HTTP_BOUNDS = HTTP_SECONDS.les, HTTP_SECONDS.bounds
COUNTERS = {PROVIDER_REQUESTS: ("provider", "outcome"), HTTP_REQUESTS: ("method", "route", "status")}
HISTOGRAMS = (PROVIDER_SECONDS, HTTP_SECONDS)
HELP = {
    PROVIDER_REQUESTS: "Requests to providers (sends and lookups) by outcome, from every process.",
    HTTP_REQUESTS: "HTTP requests answered by the API, by route template and status.",
    PROVIDER_SECONDS.name: "Duration of provider requests.",
    HTTP_SECONDS.name: "Duration of HTTP requests in the API.",
}
# Stored name -> its label names (a histogram's buckets also carry `le`).
LABELS: dict[str, tuple[str, ...]] = {
    **COUNTERS,
    **{h.bucket: (*h.labels, "le") for h in HISTOGRAMS},
    **{h.sum: h.labels for h in HISTOGRAMS},
}


def canonical_labels(labels: dict[str, str]) -> str:
    """The `labels` column: JSON with sorted keys and no spaces."""
    return json.dumps(labels, sort_keys=True, separators=(",", ":"))


class Accumulator:
    """What one process observed since it started, in memory, and how much of it is flushed.

    Recording never takes a lock: each thread adds to its own dict of running totals, and a
    flush copies them (a dict copy is atomic under the GIL) and writes the difference to what
    it wrote before. A failed flush writes nothing and changes nothing, so its deltas go with
    the next one."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._tables: list[defaultdict[Key, float]] = []
        self._tables_lock = threading.Lock()  # taken once per recording thread, on its first use
        self._flushed: dict[Key, float] = {}
        self._flush_lock = threading.Lock()  # one flush at a time: deltas are never written twice

    def _table(self) -> defaultdict[Key, float]:
        try:
            table: defaultdict[Key, float] = self._local.table
        except AttributeError:
            table = defaultdict(float)
            with self._tables_lock:
                self._tables.append(table)
            self._local.table = table
        return table

    def provider_request(self, provider: str, outcome: str, seconds: float) -> None:
        """One request to a provider: counted by outcome, timed by provider."""
        table = self._table()
        table[(PROVIDER_REQUESTS, (provider, outcome))] += 1.0
        table[(_PROVIDER_BUCKET, (provider, _PROVIDER_LES[bisect_left(_PROVIDER_BOUNDS, seconds)]))] += 1.0
        table[(_PROVIDER_SUM, (provider,))] += seconds

    def http_request(self, method: str, route: str, status: str, seconds: float) -> None:
        """One HTTP request the API answered."""
        table = self._table()
        table[(HTTP_REQUESTS, (method, route, status))] += 1.0
        table[(_HTTP_BUCKET, (method, route, _HTTP_LES[bisect_left(_HTTP_BOUNDS, seconds)]))] += 1.0
        table[(_HTTP_SUM, (method, route))] += seconds

    def totals(self) -> dict[Key, float]:
        """Everything observed so far, summed over threads."""
        with self._tables_lock:
            tables = list(self._tables)
        out: dict[Key, float] = defaultdict(float)
        for table in tables:
            for key, value in table.copy().items():
                out[key] += value
        return out

    def flush(self, engine: Engine) -> int:
        """Add what was observed since the last successful flush to `metric_counters`; returns
        the rows written. Raises on a database error (nothing is marked flushed then)."""
        with self._flush_lock:
            totals = self.totals()
            deltas = {k: v - self._flushed.get(k, 0.0) for k, v in totals.items()}
            deltas = {k: v for k, v in deltas.items() if v}
            if not deltas:
                return 0
            add_counters(engine, deltas)
            for key in deltas:
                self._flushed[key] = totals[key]
            return len(deltas)

    def try_flush(self, engine: Engine) -> bool:
        """flush(), logging a warning instead of raising (the deltas wait for the next try)."""
        try:
            self.flush(engine)
            return True
        except Exception as exc:
            log.warning("metrics not flushed (kept for the next try): %s", exc)
            return False


def add_counters(engine: Engine, deltas: dict[Key, float]) -> None:
    """Additive upsert of deltas into `metric_counters`, in one transaction. Rows go in key
    order, so that two processes flushing at once lock them in the same order (no deadlock)."""
    rows = _rows(deltas)
    table = MetricCounter.__table__  # type: ignore[attr-defined]
    insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
    with engine.begin() as conn:
        for start in range(0, len(rows), UPSERT_BATCH):
            stmt = insert(table).values(rows[start : start + UPSERT_BATCH])
            stmt = stmt.on_conflict_do_update(
                index_elements=[table.c.name, table.c.labels],
                set_={"value": table.c.value + stmt.excluded.value},
            )
            conn.execute(stmt)


def _rows(deltas: dict[Key, float]) -> list[dict[str, object]]:
    merged: dict[tuple[str, str], float] = defaultdict(float)
    for (name, values), value in deltas.items():
        merged[(name, canonical_labels(dict(zip(LABELS[name], values, strict=True))))] += value
    return [{"name": n, "labels": labels, "value": v} for (n, labels), v in sorted(merged.items())]


class Flusher:
    """Flushes an accumulator every `interval_s` from a daemon thread (never in the way of the
    event loop that sends), and once more when stopped."""

    def __init__(self, accumulator: Accumulator, engine: Engine, interval_s: float = FLUSH_S) -> None:
        self.accumulator, self.engine, self.interval_s = accumulator, engine, interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="metrics-flusher", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.accumulator.try_flush(self.engine)

    def stop(self) -> None:
        """Stop the thread and flush what is left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.accumulator.try_flush(self.engine)


# This process's provider requests (the senders and pollers of flow processes record here).
default = Accumulator()
_process_flusher: Flusher | None = None
_process_lock = threading.Lock()


def flush_in_background(engine: Engine) -> None:
    """Flush the process's accumulator into `engine` every FLUSH_S and at exit (once started,
    later calls only point it at `engine`)."""
    global _process_flusher
    with _process_lock:
        if _process_flusher is None:
            _process_flusher = Flusher(default, engine)
            atexit.register(_flush_at_exit)
        _process_flusher.engine = engine
        _process_flusher.start()


def _flush_at_exit() -> None:
    if _process_flusher is not None:
        _process_flusher.stop()


# -- reading it back --


def message_counts(engine: Engine) -> dict[tuple[str, str], int]:
    """Messages by (channel, status): per campaign on the (campaign_id, status) index first,
    then joined to the few campaigns for their channel."""
    per_campaign = (
        select(col(Message.campaign_id), col(Message.status), func.count().label("n"))
        .group_by(col(Message.campaign_id), col(Message.status))
        .subquery()
    )
    query = (
        select(col(Campaign.channel), per_campaign.c.status, func.sum(per_campaign.c.n))
        .join(per_campaign, per_campaign.c.campaign_id == col(Campaign.id))
        .group_by(col(Campaign.channel), per_campaign.c.status)
    )
    with engine.connect() as conn:
        return {(str(ch), str(st)): int(n) for ch, st, n in conn.execute(query)}


def campaign_counts(engine: Engine) -> dict[str, int]:
    """Campaigns by status."""
    query = select(col(Campaign.status), func.count()).group_by(col(Campaign.status))
    with engine.connect() as conn:
        return {str(status): int(n) for status, n in conn.execute(query)}


def stored_counters(engine: Engine) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Rows of `metric_counters` by name, labels decoded."""
    out: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    with engine.connect() as conn:
        query = select(col(MetricCounter.name), col(MetricCounter.labels), col(MetricCounter.value))
        for name, labels, value in conn.execute(query):
            out[str(name)].append((json.loads(labels), float(value)))
    return out


class DatabaseCollector(Collector):
    """Yields every family from the database at scrape time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        """The families, read now."""
        yield self._messages()
        yield self._campaigns()
        stored = stored_counters(self.engine)
        for name, labelnames in COUNTERS.items():
            yield _counter(name, labelnames, stored.get(name, []))
        for histogram in HISTOGRAMS:
            yield _histogram(histogram, stored.get(histogram.bucket, []), stored.get(histogram.sum, []))

    def _messages(self) -> Metric:
        # A gauge under SPEC's name: messages *now* in each status, so the non-final ones go
        # down as messages move on (a counter that falls reads as a reset to Prometheus).
        family = GaugeMetricFamily(
            "campaigns_messages_total",
            "Messages by channel and current status, counted in the database.",
            labels=["channel", "status"],
        )
        found = message_counts(self.engine)
        keys = {(c.value, s.value) for c in Channel for s in MessageStatus} | set(found)
        for channel, status in sorted(keys):
            family.add_metric([channel, status], found.get((channel, status), 0))
        return family

    def _campaigns(self) -> Metric:
        family = GaugeMetricFamily("campaigns_campaigns", "Campaigns by status.", labels=["status"])
        found = campaign_counts(self.engine)
        for status in sorted({s.value for s in CampaignStatus} | set(found)):
            family.add_metric([status], found.get(status, 0))
        return family


def _counter(name: str, labelnames: Sequence[str], rows: list[tuple[dict[str, str], float]]) -> Metric:
    family = CounterMetricFamily(name.removesuffix("_total"), HELP[name], labels=list(labelnames))
    for labels, value in sorted(rows, key=lambda r: sorted(r[0].items())):
        family.add_metric([labels.get(n, "") for n in labelnames], value)
    return family


def _histogram(
    histogram: Histogram,
    bucket_rows: list[tuple[dict[str, str], float]],
    sum_rows: list[tuple[dict[str, str], float]],
) -> Metric:
    """Per-bucket rows turned into cumulative buckets (with +Inf), _sum and _count."""
    names = histogram.labels
    per_series: dict[tuple[str, ...], dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for labels, value in bucket_rows:
        per_series[tuple(labels.get(n, "") for n in names)][float(labels.get("le", "+Inf"))] += value
    sums = {tuple(labels.get(n, "") for n in names): value for labels, value in sum_rows}
    family = HistogramMetricFamily(histogram.name, HELP[histogram.name], labels=list(names))
    for series in sorted(per_series.keys() | sums.keys()):
        counts = per_series.get(series, {})
        bounds = sorted({*histogram.bounds, *counts} - {float("inf")})
        cumulative, buckets = 0.0, []
        for bound in bounds:
            cumulative += counts.get(bound, 0.0)
            buckets.append((_le(bound), cumulative))
        buckets.append(("+Inf", cumulative + counts.get(float("inf"), 0.0)))
        family.add_metric(list(series), buckets, sums.get(series, 0.0))
    return family


def registry_for(engine: Engine) -> CollectorRegistry:
    """A registry of its own (not the global one) holding the database collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(engine))
    return registry
