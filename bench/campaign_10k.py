"""Benchmark: a 10,000-recipient SMS campaign through the real pipeline.

Starts `campaigns serve` (Prefect server, worker, API) on free ports in a temporary data dir,
bulk-loads the contacts, creates the campaign over HTTP and follows it to `completed`. Prints
dispatch throughput (messages/second from `processing` to everything handed to the provider),
end-to-end time, and the peak RSS (VmHWM) of the flow-run process.

    python bench/campaign_10k.py [--recipients 10000] [--latency-ms 0] [--chunk-size 1000]
    python bench/campaign_10k.py --provider twilio --latency-ms 20   # against the Twilio fake
    python bench/campaign_10k.py --provider twilio --latency-ms 20 --callbacks  # + status callbacks
    python bench/campaign_10k.py --quiet-half   # send window open for half the recipients only

With --provider twilio the fake Twilio server (tests/providers/fake_server.py) runs in its own
process on loopback, adding --latency-ms to every request; pacing is lifted
(CAMPAIGNS_SMS__RATE_PER_SECOND=0) and --concurrency requests are kept in flight. --callbacks sets
CAMPAIGNS_PUBLIC_URL to serve's address, so the fake posts status callbacks to it; the status
lookups the campaign made are printed from GET /metrics.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the bulk factory, the serve helper and the fakes live with the tests

from core.db import make_engine, migrate  # noqa: E402
from core.settings import Settings  # noqa: E402
from deployments.stack import free_port  # noqa: E402
from tests.e2e.serving import clean_env, start_serve  # noqa: E402
from tests.factories import bulk_tenant  # noqa: E402
from tests.providers import fake_server as fk  # noqa: E402


class GetLatency:
    """Times GET /v1/campaigns/{id} from a second client while the campaign runs."""

    def __init__(self, url: str, headers: dict[str, str], enabled: bool = True) -> None:
        self.url, self.headers, self.enabled = url, headers, enabled
        self.campaign_id: str | None = None
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=30) as client:
            while not self._stop.is_set():
                if self.campaign_id:
                    start = time.perf_counter()
                    client.get(f"/v1/campaigns/{self.campaign_id}").raise_for_status()
                    self.samples.append(time.perf_counter() - start)
                time.sleep(0.05)

    def __enter__(self) -> GetLatency:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join()

    def percentile(self, p: float) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000 if ordered else float("nan")


class PeakRss:
    """Samples VmHWM of every flow-run process (python -m prefect.engine … ) below a root pid."""

    def __init__(self) -> None:
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                    if b"prefect.engine" not in cmd and b"flow_run" not in cmd:
                        continue
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            self.peak_kb = max(self.peak_kb, int(line.split()[1]))
                except OSError:
                    continue
            time.sleep(0.1)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def sending_window(settings: Settings, campaign_id: str) -> tuple[float, float] | None:
    """Epoch seconds of the first and last provider hand-over recorded (sent_at, ±0.5 s)."""
    from sqlalchemy import func, select
    from sqlmodel import col

    from core.db import session_scope
    from models import Message

    with session_scope(make_engine(settings.resolved_database_url())) as session:
        first, last = session.execute(
            select(func.min(Message.sent_at), func.max(Message.sent_at)).where(
                col(Message.campaign_id) == campaign_id
            )
        ).one()
    return (first.timestamp(), last.timestamp()) if first and last else None


def orchestration_figures(prefect_api: str, campaign_id: str, settings: Settings) -> dict[str, float] | None:
    """Flow runs and task runs the campaign cost in Prefect, and its run's start → first message."""
    from datetime import datetime

    from core.db import session_scope
    from models import Campaign

    with session_scope(make_engine(settings.resolved_database_url())) as session:
        parent = session.get(Campaign, campaign_id)
        parent_id = parent.flow_run_id if parent else None
    if not parent_id:
        return None
    try:
        with httpx.Client(base_url=prefect_api, timeout=30) as prefect:
            chunk_runs = prefect.post(
                "/flow_runs/filter",
                json={"flow_runs": {"tags": {"all_": [f"campaign:{campaign_id}"]}}, "limit": 200},
            ).json()
            ids = [parent_id, *(r["id"] for r in chunk_runs)]
            tasks = prefect.post("/task_runs/count", json={"flow_runs": {"id": {"any_": ids}}}).json()
            start = prefect.get(f"/flow_runs/{parent_id}").json()["start_time"]
    except (httpx.HTTPError, KeyError, ValueError):
        return None
    window = sending_window(settings, campaign_id)
    started = datetime.fromisoformat(start.replace("Z", "+00:00")).timestamp() if start else None
    return {
        "flow_runs": len(ids),
        "task_runs": int(tasks),
        "start_to_first_s": (window[0] - started) if window and started else float("nan"),
    }


def provider_lookups(url: str, provider: str) -> float:
    """Answered status/sent-message lookups of `provider` so far, from GET /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    total = 0.0
    for line in text.splitlines():
        counted = line.startswith("campaigns_provider_requests_total{") and 'outcome="lookup"' in line
        if counted and f'provider="{provider}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def split_zones(settings: Settings, account_id: str) -> dict[str, str]:
    """Every other contact in a zone inside 09:00-17:00 now, the others in one outside it."""
    from sqlalchemy import select, update
    from sqlmodel import col

    from core.db import session_scope
    from models import Contact
    from tests.core.test_send_window import WINDOW, zones_now

    inside, outside = zones_now()
    with session_scope(make_engine(settings.resolved_database_url())) as session:
        ids = list(
            session.execute(
                select(col(Contact.id)).where(col(Contact.account_id) == account_id).order_by(col(Contact.id))
            ).scalars()
        )
        for zone, part in ((inside, ids[0::2]), (outside, ids[1::2])):
            for start in range(0, len(part), 5000):
                session.execute(
                    update(Contact)
                    .where(col(Contact.id).in_(part[start : start + 5000]))
                    .values(timezone=zone)
                )
    print(
        f"zones:                    {len(ids[0::2])} in {inside} (inside 09:00-17:00), "
        f"{len(ids[1::2])} in {outside}"
    )
    return dict(WINDOW)


def total_held(campaign: dict[str, object]) -> int:
    """The recipients outside their window: every other one."""
    return int(campaign["total_recipients"]) // 2  # type: ignore[call-overload]


def report_quiet_half(
    api: httpx.Client, settings: Settings, cid: str, c: dict[str, object], t_processing: float, now: float
) -> int:
    """Print the in-window figures of a --quiet-half run, then cancel the campaign."""
    sending = sending_window(settings, cid)
    sent = int(c["sent_count"]) + int(c["delivered_count"]) + int(c["failed_count"])  # type: ignore[call-overload]
    print(f"recipients:               {c['total_recipients']} ({c['pending_count']} held by their window)")
    print(
        f"in-window dispatch:       {sent} in {now - t_processing:.1f} s "
        f"= {sent / (now - t_processing):,.0f} messages/s"
    )
    if sending:
        span = max(sending[1] - sending[0], 1e-9)
        print(f"in-window sending (first → last handed over): {span:.1f} s = {sent / span:,.0f} messages/s")
    time.sleep(3)
    held = api.get(f"/v1/campaigns/{cid}").json()
    print(f"after 3 s:                status {held['status']}, {held['pending_count']} still pending")
    api.post(f"/v1/campaigns/{cid}/cancel").raise_for_status()
    return 0 if held["status"] == "processing" and held["pending_count"] == total_held(held) else 1


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--provider", choices=["sandbox", "twilio"], default="sandbox")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--no-global-limits", action="store_true", help="CAMPAIGNS_GLOBAL_LIMITS=false")
    parser.add_argument(
        "--distribute",
        action="store_true",
        help="CAMPAIGNS_DISTRIBUTE_CHUNKS=true: chunks as flow runs, each in its own process",
    )
    parser.add_argument("--chunk-run-size", type=int, default=None, help="CAMPAIGNS_CHUNK_RUN_SIZE")
    parser.add_argument("--chunk-concurrency", type=int, default=2, help="CAMPAIGNS_CHUNK_CONCURRENCY")
    parser.add_argument(
        "--callbacks", action="store_true", help="CAMPAIGNS_PUBLIC_URL = serve's URL (status callbacks)"
    )
    parser.add_argument(
        "--quiet-half",
        action="store_true",
        help="a 09:00-17:00 send window, half the recipients in a zone inside it now, half outside: "
        "prints the in-window sending rate, then cancels the campaign",
    )
    parser.add_argument("--database-url", default=None, help="CAMPAIGNS_DATABASE_URL (default: SQLite)")
    parser.add_argument(
        "--no-get-latency", action="store_true", help="do not time GETs from a second client meanwhile"
    )
    args = parser.parse_args()

    data = Path(tempfile.mkdtemp(prefix="campaigns-bench-"))
    port, prefect_port = free_port(), free_port()
    env = clean_env(
        CAMPAIGNS_DATA_DIR=str(data),
        CAMPAIGNS_PREFECT_PORT=str(prefect_port),
        CAMPAIGNS_SANDBOX__LATENCY_MS=str(args.latency_ms),
        CAMPAIGNS_SANDBOX__DELIVERY_DELAY_S="0.5",
        CAMPAIGNS_CHUNK_SIZE=str(args.chunk_size),
        PREFECT_LOGGING_LEVEL="WARNING",
        CAMPAIGNS_API__RATE_PER_SECOND="1000",
        CAMPAIGNS_API__BURST="1000",
        CAMPAIGNS_GLOBAL_LIMITS="false" if args.no_global_limits else "true",
        CAMPAIGNS_DISTRIBUTE_CHUNKS="true" if args.distribute else "false",
        CAMPAIGNS_CHUNK_CONCURRENCY=str(args.chunk_concurrency),
    )
    if args.chunk_run_size:
        env["CAMPAIGNS_CHUNK_RUN_SIZE"] = str(args.chunk_run_size)
    if args.callbacks:
        env["CAMPAIGNS_PUBLIC_URL"] = f"http://127.0.0.1:{port}"
    if args.database_url:
        env["CAMPAIGNS_DATABASE_URL"] = args.database_url
    fake = None
    if args.provider == "twilio":
        fake_port = free_port()
        fake = subprocess.Popen(
            [sys.executable, "-m", "tests.providers.fake_server", str(fake_port), str(args.latency_ms)],
            cwd=ROOT,
        )
        env.update(
            {
                "CAMPAIGNS_SMS__PROVIDER": "twilio",
                "CAMPAIGNS_TWILIO__ACCOUNT_SID": fk.TWILIO_SID,
                "CAMPAIGNS_TWILIO__AUTH_TOKEN": fk.TWILIO_TOKEN,
                "CAMPAIGNS_TWILIO__BASE_URL": f"http://127.0.0.1:{fake_port}/twilio",
                "CAMPAIGNS_SMS__RATE_PER_SECOND": "0",
                "CAMPAIGNS_SMS__CONCURRENCY": str(args.concurrency),
            }
        )
    settings = Settings(data_dir=data, database_url=args.database_url)
    migrate(settings)
    tenant = bulk_tenant(make_engine(settings.resolved_database_url()), args.recipients, sender="BENCH")
    api_key, list_id = tenant.api_key, tenant.list_id
    window = split_zones(settings, tenant.account_id) if args.quiet_half else None
    url = f"http://127.0.0.1:{port}"
    serve = None
    try:
        serve = start_serve(env, port, data / "serve.log", timeout=180)
        headers = {"Authorization": f"Bearer {api_key}"}
        with (
            PeakRss() as rss,
            GetLatency(url, headers, enabled=not args.no_get_latency) as latency,
            httpx.Client(base_url=url, headers=headers, timeout=60) as api,
        ):
            t_create = time.monotonic()
            r = api.post(
                "/v1/campaigns",
                json={
                    "name": "bench",
                    "channel": "sms",
                    "contact_list_id": list_id,
                    "sender_id": "BENCH",
                    "body": "Hello {{first_name}}!",
                    **({"send_window": window} if window else {}),
                },
            )
            r.raise_for_status()
            cid = latency.campaign_id = r.json()["id"]
            t_processing = t_dispatched = None
            total = r.json()["total_recipients"]
            while True:
                c = api.get(f"/v1/campaigns/{cid}").json()
                now = time.monotonic()
                if t_processing is None and c["status"] != "draft":
                    t_processing = now
                if t_dispatched is None and c["status"] in ("sent", "completed"):
                    t_dispatched = now
                if c["status"] in ("completed", "failed", "cancelled"):
                    t_done = now
                    break
                done = c["sent_count"] + c["delivered_count"] + c["failed_count"]
                if window and c["status"] == "processing" and done >= total - total_held(c):
                    return report_quiet_half(api, settings, cid, c, t_processing or now, now)
                time.sleep(0.5 if args.no_get_latency else 0.1)
        assert t_processing is not None and t_dispatched is not None
        total = c["total_recipients"]
        print(f"provider:                 {args.provider} ({args.latency_ms:g} ms latency per request)")
        print(f"recipients:               {total}")
        print(
            f"final status:             {c['status']} (delivered {c['delivered_count']}, "
            f"failed {c['failed_count']})"
        )
        print(f"create → processing:      {t_processing - t_create:.1f} s (runner poll + flow start)")
        print(
            f"dispatch (processing → sent): {t_dispatched - t_processing:.1f} s "
            f"= {total / max(t_dispatched - t_processing, 1e-9):,.0f} messages/s"
        )
        print(
            f"end to end (create → completed): {t_done - t_create:.1f} s "
            f"= {total / (t_done - t_create):,.0f} messages/s"
        )
        sending = sending_window(settings, cid)
        if sending:
            print(
                f"sending (first → last message handed over): {sending[1] - sending[0]:.1f} s "
                f"= {total / max(sending[1] - sending[0], 1e-9):,.0f} messages/s"
            )
        orchestration = orchestration_figures(f"http://127.0.0.1:{prefect_port}/api", cid, settings)
        if orchestration:
            print(
                f"orchestration: {orchestration['flow_runs']} flow runs, "
                f"{orchestration['task_runs']} task runs; "
                f"flow start → first message {orchestration['start_to_first_s']:.1f} s"
            )
        print(f"chunks:                   {'flow runs (distributed)' if args.distribute else 'task runs'}")
        if args.provider != "sandbox":
            lookups = provider_lookups(url, args.provider)
            share = 100 * lookups / max(total, 1)
            print(
                f"status lookups:           {lookups:,.0f} = {share:.1f} % of messages "
                f"({'with' if args.callbacks else 'without'} status callbacks)"
            )
        print(f"flow-run process peak RSS: {rss.peak_kb / 1024:.0f} MB")
        if latency.enabled:
            print(
                f"GET /v1/campaigns/{{id}} while running: p50 {latency.percentile(50):.1f} ms, "
                f"p99 {latency.percentile(99):.1f} ms ({len(latency.samples)} requests)"
            )
        return 0 if c["status"] == "completed" else 1
    finally:
        if serve is not None:
            serve.send_signal(signal.SIGTERM)
            serve.wait(timeout=60)
        if fake is not None:
            fake.terminate()
            fake.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
