"""Screenshots of the Prefect UI as an operator sees it (docs/ui-*.png in the README).

Starts `campaigns serve` in a temporary data dir, creates an account, a recurring schedule and a
sandbox campaign slow enough to be caught while sending (some recipients fail, so the report
has an error breakdown), and takes three screenshots with headless Chromium (Debian's
`chromium` package): the campaign's flow run, its markdown report, and the launch-campaign run
form. It also checks through the Prefect API that the run, its artifacts and the schedule exist.

    python bench/screenshots.py [--out docs] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deployments.stack import free_port  # noqa: E402
from tests.e2e.serving import clean_env, cli_json, start_serve, wait_for  # noqa: E402


def shoot(chromium: str, url: str, out: Path, *, height: int = 1100, wait_ms: int = 12000) -> None:
    """One headless screenshot of a single-page-app route (virtual time lets it render)."""
    subprocess.run(
        [
            chromium,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size=1440,{height}",
            f"--virtual-time-budget={wait_ms}",
            f"--screenshot={out}",
            url,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    print(f"{out}  ← {url}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--recipients", type=int, default=3000)
    args = parser.parse_args()

    data = Path(tempfile.mkdtemp(prefix="campaigns-shots-"))
    prefect_port, port = free_port(), free_port()
    env = clean_env(
        CAMPAIGNS_DATA_DIR=str(data),
        CAMPAIGNS_PREFECT_PORT=str(prefect_port),
        CAMPAIGNS_API__RATE_PER_SECOND="1000",
        CAMPAIGNS_API__BURST="1000",
        # Slow and imperfect on purpose: caught while sending, with errors to break down.
        CAMPAIGNS_SANDBOX__LATENCY_MS="400",
        CAMPAIGNS_SANDBOX__FAILURE_RATE="0.04",
        CAMPAIGNS_SANDBOX__UNDELIVERED_RATE="0.02",
        CAMPAIGNS_SMS__RATE_PER_SECOND="60",
    )
    proc = start_serve(env, port, data / "serve.log")
    ui = f"http://127.0.0.1:{prefect_port}"
    prefect = httpx.Client(base_url=f"{ui}/api", timeout=30)
    try:
        account = cli_json(env, "accounts", "create", "Acme Shoes", "--credits", "100000")
        cli_json(
            env,
            "sender-ids",
            "add",
            account["account_id"],
            "--channel",
            "sms",
            "--value",
            "ACME",
            "--approved",
        )
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {account['api_key']}"},
            timeout=60,
        )
        lst = api.post("/v1/contact-lists", json={"name": "VIP customers"}).json()
        rows = [{"name": f"Customer {i}", "phone": f"+1415{5550000 + i:07d}"} for i in range(args.recipients)]
        rows[7]["phone"] = "+15005550001"  # the sandbox's always-invalid number
        api.post(f"/v1/contacts/import?list_id={lst['id']}", json=rows).raise_for_status()
        fields = {
            "channel": "sms",
            "contact_list_id": lst["id"],
            "sender_id": "ACME",
            "body": "Hi {{first_name}}, the winter sale starts today: 30% off with code WINTER30.",
        }
        schedule = api.post(
            "/v1/schedules",
            json={
                "name": "Monday newsletter",
                "cron": "0 9 * * 1",
                "timezone": "America/New_York",
                "campaign": {"name": "Monday newsletter", **fields},
            },
        ).json()
        campaign = api.post("/v1/campaigns", json={"name": "Winter sale", **fields}).json()
        cid = campaign["id"]

        def progress() -> dict[str, object]:
            return dict(api.get(f"/v1/campaigns/{cid}").json())

        wait_for(
            progress,
            lambda c: int(str(c["sent_count"])) + int(str(c["delivered_count"])) > 300,
            180,
            "sending",
        )
        time.sleep(6)  # the report artifact refreshes every 5 s while sending
        run_id = str(progress()["flow_run_id"])
        run = prefect.get(f"/flow_runs/{run_id}").raise_for_status().json()
        found = prefect.post(
            "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}
        ).json()
        keys = {a["key"].split("-")[0]: a for a in found if a.get("key")}
        assert {"progress", "report"} <= set(keys), keys
        assert "## Top errors" in keys["report"]["data"], keys["report"]["data"]
        deployment = prefect.get("/deployments/name/launch-campaign/default").raise_for_status().json()
        slugs = [s["slug"] for s in prefect.get(f"/deployments/{deployment['id']}/schedules").json()]
        assert schedule["id"] in slugs, slugs
        print(f"run {run['name']!r} tags {run['tags']}; artifacts {sorted(keys)}; schedule {schedule['id']}")

        args.out.mkdir(parents=True, exist_ok=True)
        shoot(args.chromium, f"{ui}/runs/flow-run/{run_id}?tab=Artifacts", args.out / "ui-run.png")
        shoot(args.chromium, f"{ui}/artifacts/artifact/{keys['report']['id']}", args.out / "ui-report.png")
        shoot(
            args.chromium,
            f"{ui}/deployments/deployment/{deployment['id']}/run",
            args.out / "ui-run-form.png",
            height=1500,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
