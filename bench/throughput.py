"""Benchmark: how close a full campaign gets to the raw HTTP ceiling, in one run.

    python bench/throughput.py [--requests 20000] [--recipients 100000] [--concurrency 64] [--latency-ms 0]

(a) Raw ceilings: a plain asyncio loop POSTing Twilio `Messages.json` requests to the Twilio fake
    (its own process on loopback) at the same concurrency with one `httpx.AsyncClient` (default
    transport), one over the `httpx-aiohttp` package's transport, the Twilio adapter itself (httpx
    requests over our aiohttp transport, channels/http.py), and one `aiohttp.ClientSession`.
(b) A full campaign of --recipients through `campaigns serve` to the same fake (bench/campaign_10k.py),
    chunks as flow runs (both cores; --in-process: task runs in the campaign's process).
Prints every rate and the ratio of (b)'s sending rate (first → last message handed over) to the
best raw ceiling, plus the orchestration share (runs per campaign, flow start → first message).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import re
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deployments.stack import free_port  # noqa: E402
from tests.providers import fake_server as fk  # noqa: E402

AUTH = "Basic " + base64.b64encode(f"{fk.TWILIO_SID}:{fk.TWILIO_TOKEN}".encode()).decode()


async def run_loop(send, total: int, concurrency: int) -> float:  # type: ignore[no-untyped-def]
    """Requests per second of `send(i)` over `total` requests, `concurrency` at a time."""
    queue = iter(range(total))

    async def worker() -> None:
        for i in queue:
            await send(i)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - start)


async def raw_ceilings(url: str, total: int, concurrency: int) -> dict[str, float]:
    path = f"{url}/twilio/2010-04-01/Accounts/{fk.TWILIO_SID}/Messages.json"
    rates = {}
    for label, transport in (("httpx (default transport)", None), ("httpx + aiohttp transport", "aiohttp")):
        limits = httpx.Limits(max_connections=concurrency)
        client = httpx.AsyncClient(
            transport=AiohttpTransport(limits=limits)
            if transport
            else httpx.AsyncHTTPTransport(limits=limits),
            headers={"Authorization": AUTH},
        )
        async with client:

            async def send(i: int, client: httpx.AsyncClient = client) -> None:
                r = await client.post(path, data={"To": f"+1{2000000000 + i}", "From": "BENCH", "Body": "hi"})
                assert r.status_code == 201

            rates[label] = await run_loop(send, total, concurrency)
    async with aiohttp.ClientSession(
        headers={"Authorization": AUTH}, connector=aiohttp.TCPConnector(limit=concurrency)
    ) as session:

        async def send_aiohttp(i: int) -> None:
            async with session.post(
                path, data={"To": f"+1{2000000000 + i}", "From": "BENCH", "Body": "hi"}
            ) as r:
                assert r.status == 201
                await r.read()

        rates["aiohttp.ClientSession"] = await run_loop(send_aiohttp, total, concurrency)

    from channels.base import OutboundMessage
    from channels.sms_twilio import TwilioChannel
    from core.settings import TwilioSettings

    twilio = TwilioChannel(
        TwilioSettings(account_sid=fk.TWILIO_SID, auth_token=fk.TWILIO_TOKEN, base_url=f"{url}/twilio")
    )
    await twilio.open()

    async def send_adapter(i: int) -> None:
        await twilio.send(
            OutboundMessage(
                message_id=f"m{i}", campaign_id="bench", to=f"+1{2000000000 + i}", sender="BENCH", body="hi"
            )
        )

    rates["adapter (httpx + ours)"] = await run_loop(send_adapter, total, concurrency)
    await twilio.close()
    return rates


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--in-process", action="store_true", help="chunks as task runs in one process")
    args = parser.parse_args()
    port = free_port()
    fake = subprocess.Popen(
        [sys.executable, "-m", "tests.providers.fake_server", str(port), str(args.latency_ms)], cwd=ROOT
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        rates = asyncio.run(raw_ceilings(url, args.requests, args.concurrency))
    finally:
        fake.terminate()
        fake.wait(timeout=10)
    print(
        f"(a) raw ceilings, {args.requests:,} requests, concurrency {args.concurrency}, "
        f"{args.latency_ms:g} ms latency:"
    )
    for label, rate in rates.items():
        print(f"    {label:<28} {rate:8,.0f} req/s")
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "campaign_10k.py"),
            "--provider",
            "twilio",
            "--recipients",
            str(args.recipients),
            "--latency-ms",
            str(args.latency_ms),
            "--concurrency",
            str(args.concurrency),
            "--no-get-latency",
            "--no-global-limits",
            *([] if args.in_process else ["--distribute"]),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout
    print(f"(b) full campaign of {args.recipients:,} recipients through campaigns serve:")
    print("    " + "\n    ".join(line for line in out.splitlines() if ":" in line))
    match = re.search(r"sending \(first → last message handed over\): [\d.]+ s = ([\d,]+) messages/s", out)
    if not match:
        print("the campaign did not report a sending rate:\n" + out)
        return 1
    campaign_rate = float(match.group(1).replace(",", ""))
    best_label, best = max(rates.items(), key=lambda kv: kv[1])
    print(f"ratio (b) sending / best raw ceiling ({best_label}): {campaign_rate / best:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
