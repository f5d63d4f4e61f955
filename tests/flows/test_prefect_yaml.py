"""deployments/prefect.yaml: for teams that run Prefect work pools instead of `campaigns worker`."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import Engine

ROOT = Path(__file__).resolve().parents[2]
FILE = ROOT / "deployments" / "prefect.yaml"

pytestmark = pytest.mark.prefect


def test_the_file_names_the_three_deployments() -> None:
    from prefect.flows import load_flow_from_entrypoint

    config = yaml.safe_load(FILE.read_text())
    flows = {load_flow_from_entrypoint(d["entrypoint"]).name: d for d in config["deployments"]}
    assert set(flows) == {"send-campaign", "launch-campaign", "send-campaign-chunk"}
    for d in flows.values():
        assert d["name"] == "default"  # send-campaign/default is what launches look for
        assert d["schedules"] is None  # deploying again keeps the recurring campaigns
        assert d["work_pool"]["name"] == "campaigns"
        assert "CAMPAIGNS_DATABASE_URL" in d["work_pool"]["job_variables"]["env"]


async def test_prefect_deploy_registers_them_and_keeps_schedules(flow_engine: Engine, tmp_path: Path) -> None:
    """`prefect deploy --all` with this file, twice, against a real Prefect API (under another
    deployment name, so the session's `default` deployments stay as the other tests left them)."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.schedules import IntervalSchedule
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.settings import PREFECT_API_URL

    copy = tmp_path / "prefect.yaml"
    copy.write_text(FILE.read_text().replace("  - name: default", "  - name: yaml-check"))
    async with get_client() as client:
        with contextlib.suppress(ObjectAlreadyExists):  # an earlier run of this test made it
            await client.create_work_pool(WorkPoolCreate(name="campaigns", type="process"))
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "CAMPAIGNS_DATABASE_URL": "postgresql+psycopg://db.internal/campaigns",
    }

    def deploy() -> None:
        r = subprocess.run(
            [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", str(copy)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert r.returncode == 0, r.stdout + r.stderr

    deploy()
    async with get_client() as client:
        launch = await client.read_deployment_by_name("launch-campaign/yaml-check")
        assert launch.work_pool_name == "campaigns"
        assert launch.job_variables["env"]["CAMPAIGNS_DATABASE_URL"].startswith("postgresql")
        assert launch.parameter_openapi_schema["properties"]["channel"]
        for name in ("send-campaign/yaml-check", "send-campaign-chunk/yaml-check"):
            assert (await client.read_deployment_by_name(name)).work_pool_name == "campaigns"
        await client.create_deployment_schedules(
            launch.id, [(IntervalSchedule(interval=3600), True)], parameters={"name": "kept"}, slug="sch_kept"
        )
    deploy()
    async with get_client() as client:
        kept = await client.read_deployment_schedules(launch.id)
    assert [(s.slug, s.parameters) for s in kept] == [("sch_kept", {"name": "kept"})]
