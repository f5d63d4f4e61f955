"""Schemathesis over the app's own /openapi.json (SPEC §9): bounded (a fixed seed, a few
cases per operation), no 5xx, and every response as the document declares it — status code,
content type, headers and body schema."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from core.db import make_engine
from core.settings import Settings
from tests.conftest import MemoryScheduler, RecordingLauncher
from tests.factories import Tenant, make_tenant

CASES_PER_OPERATION = 6
# Valid inputs (they must be answered as documented) and invalid ones (they must be refused
# with a documented 4xx, never a 5xx).
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory, template_db: Path) -> Iterator[tuple[Any, Tenant]]:
    path = tmp_path_factory.mktemp("fuzz") / "campaigns.db"
    shutil.copy(template_db, path)
    cfg = Settings(
        data_dir=path.parent,
        database_url=f"sqlite:///{path}",
        api={"rate_per_second": 100_000, "burst": 100_000},
    )
    engine = make_engine(cfg.resolved_database_url())
    tenant = make_tenant(engine, credits_amount=10**9)
    app = create_app(cfg, launcher=RecordingLauncher(), scheduler=MemoryScheduler(), engine=engine)
    yield app, tenant
    engine.dispose()


def test_api_conforms_to_its_openapi(fuzzed: tuple[Any, Tenant]) -> None:
    app, tenant = fuzzed
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    ran: dict[str, int] = {}
    for result, mode in itertools.product(schema.get_all_operations(), MODES):
        operation = result.ok()

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=CASES_PER_OPERATION,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: Any) -> None:
            ran[case.operation.label] = ran.get(case.operation.label, 0) + 1
            case.call_and_validate(headers=tenant.headers, checks=CHECKS)

        try:
            fuzz()
        except Unsatisfiable:  # nothing in this operation can be made invalid (e.g. /healthz)
            assert mode is GenerationMode.NEGATIVE, operation.label
    assert len(ran) >= 30, sorted(ran)
    print(f"\nfuzz: {sum(ran.values())} cases over {len(ran)} operations")
