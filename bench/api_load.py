"""Benchmark: 100 concurrent clients against `campaigns api` (creates, gets, lists).

    python bench/api_load.py [--clients 100] [--seconds 20] [--workers 2]

Starts `campaigns api` on a free port over a fresh SQLite database (no Prefect: created campaigns
stay draft, which is what an API-only load test wants), then runs the clients for the given time
(a bounded loop on loopback) and prints requests/s, p50/p99 latency per kind, and the 5xx count.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from channels.http import AiohttpTransport  # noqa: E402
from core.db import make_engine, migrate  # noqa: E402
from core.settings import Settings  # noqa: E402
from deployments.stack import free_port  # noqa: E402
from tests.e2e.serving import clean_env  # noqa: E402
from tests.factories import Tenant, make_tenant  # noqa: E402


async def client_loop(
    base: str, tenant: Tenant, deadline: float, results: list[tuple[str, int, float]]
) -> None:
    async with httpx.AsyncClient(
        base_url=base, headers=tenant.headers, timeout=30, transport=AiohttpTransport()
    ) as api:
        created: list[str] = []
        while time.monotonic() < deadline:
            roll = random.random()
            start = time.perf_counter()
            if roll < 0.2 or not created:
                kind = "create"
                r = await api.post(
                    "/v1/campaigns",
                    json={
                        "name": "load",
                        "channel": "sms",
                        "contact_list_id": tenant.list_id,
                        "sender_id": tenant.sender,
                        "body": "Hi {{first_name}}",
                    },
                )
                if r.status_code == 201:
                    created.append(r.json()["id"])
            elif roll < 0.7:
                kind = "get"
                r = await api.get(f"/v1/campaigns/{random.choice(created)}")
            else:
                kind = "list"
                r = await api.get("/v1/campaigns?per_page=20")
            results.append((kind, r.status_code, time.perf_counter() - start))


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000 if ordered else float("nan")


async def run(base: str, tenants: list[Tenant], clients: int, seconds: float) -> None:
    results: list[tuple[str, int, float]] = []
    deadline = time.monotonic() + seconds
    start = time.monotonic()
    await asyncio.gather(
        *(client_loop(base, tenants[i % len(tenants)], deadline, results) for i in range(clients))
    )
    elapsed = time.monotonic() - start
    errors = sum(1 for _k, status, _t in results if status >= 500)
    others = sum(1 for _k, status, _t in results if 400 <= status < 500)
    print(
        f"{clients} clients, {elapsed:.1f} s: {len(results):,} requests = "
        f"{len(results) / elapsed:,.0f} req/s; 5xx: {errors}; 4xx: {others}"
    )
    for kind in ("create", "get", "list"):
        times = [t for k, _s, t in results if k == kind]
        print(f"  {kind:<6} {len(times):>7,}  p50 {pct(times, 50):7.1f} ms  p99 {pct(times, 99):7.1f} ms")
    print(
        f"  all    {len(results):>7,}  p50 {pct([t for *_x, t in results], 50):7.1f} ms  "
        f"p99 {pct([t for *_x, t in results], 99):7.1f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--accounts", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="campaigns api --workers (one per core)")
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="campaigns-api-load-"))
    settings = Settings(data_dir=data)
    migrate(settings)
    engine = make_engine(settings.resolved_database_url())
    tenants = [
        make_tenant(
            engine, credits_amount=10**9, contacts_n=10, name=f"load{i}", phone_base=14150000000 + i * 100
        )
        for i in range(args.accounts)
    ]
    port = free_port()
    env = clean_env(
        CAMPAIGNS_DATA_DIR=str(data), CAMPAIGNS_API__RATE_PER_SECOND="100000", CAMPAIGNS_API__BURST="100000"
    )
    log = (data / "api.log").open("w")
    api = subprocess.Popen(
        [sys.executable, "-m", "deployments.cli", "api", "--port", str(port), "--workers", str(args.workers)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(f"{base}/v1/credits", headers=tenants[0].headers, timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        print(f"campaigns api --workers {args.workers} on SQLite:")
        asyncio.run(run(base, tenants, args.clients, args.seconds))
    finally:
        api.terminate()
        api.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
