"""GET /metrics over HTTP: no API key, the SPEC families, and requests counted by route template."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from tests.factories import make_tenant

FAMILIES = {
    "campaigns_messages_total",
    "campaigns_provider_requests_total",
    "campaigns_provider_request_seconds",
    "campaigns_campaigns",
    "campaigns_http_requests_total",
    "campaigns_http_request_seconds",
}


def scrape(client: TestClient) -> tuple[set[str], dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    families = list(text_string_to_metric_families(response.text))
    names = {f.name + ("_total" if f.type == "counter" else "") for f in families}
    samples = {(s.name, frozenset(s.labels.items())): s.value for f in families for s in f.samples}
    return names, samples


def sample(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_metrics_need_no_api_key_and_show_every_family(client: TestClient) -> None:
    names, samples = scrape(client)
    assert names >= FAMILIES
    assert sample(samples, "campaigns_campaigns", status="draft") == 0


def test_requests_are_counted_by_route_template_and_status(client: TestClient, engine: Engine) -> None:
    tenant = make_tenant(engine)
    for campaign_id in ("cmp_missing1", "cmp_missing2"):
        assert client.get(f"/v1/campaigns/{campaign_id}", headers=tenant.headers).status_code == 404
    assert client.get("/v1/campaigns/cmp_missing1").status_code == 401
    assert client.get("/no/such/path/42").status_code == 404
    _names, samples = scrape(client)
    route = "/v1/campaigns/{campaign_id}"
    counted = "campaigns_http_requests_total"
    assert sample(samples, counted, method="GET", route=route, status="404") == 2
    assert sample(samples, counted, method="GET", route=route, status="401") == 1
    assert sample(samples, counted, method="GET", route="unmatched", status="404") == 1
    assert not any("missing" in dict(labels).get("route", "") for _name, labels in samples)
    assert sample(samples, "campaigns_http_request_seconds_count", method="GET", route=route) == 3
    assert sample(samples, "campaigns_http_request_seconds_bucket", method="GET", route=route, le="+Inf") == 3
    _names, later = scrape(client)  # the first scrape itself is counted by the next
    assert sample(later, counted, method="GET", route="/metrics", status="200") == 1


def test_metrics_are_in_the_openapi_document_as_text(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/metrics"]["get"]
    assert operation["tags"] == ["operations"]
    assert "text/plain" in operation["responses"]["200"]["content"]
    assert not operation.get("security")
