"""Event webhook endpoints over HTTP (SPEC §9): create (the secret shown once), list, delete,
another account's id is 404, private targets refused; and what /openapi.json says of them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from api.app import create_app
from core.settings import Settings, WebhooksSettings
from tests.api.test_campaigns import assert_error
from tests.conftest import RecordingLauncher
from tests.factories import Tenant, make_tenant

EVENTS = ["campaign.status_changed", "message.failed"]


@pytest.fixture
def tenant(engine: Engine) -> Tenant:
    return make_tenant(engine, contacts_n=1)


@pytest.fixture
def other(engine: Engine) -> Tenant:
    return make_tenant(engine, contacts_n=1, name="other")


def _create(client: TestClient, tenant: Tenant, **over: Any) -> Any:
    return client.post(
        "/v1/webhook-endpoints",
        json={"url": "https://hooks.example.com/campaigns", "events": EVENTS, **over},
        headers=tenant.headers,
    )


def test_create_shows_the_secret_once_and_lists_never_do(client: TestClient, tenant: Tenant) -> None:
    r = _create(client, tenant)
    assert r.status_code == 201, r.text
    made = r.json()
    assert set(made) == {"id", "url", "events", "secret", "created_at"}
    assert re.fullmatch(r"whe_[0-9a-f]{24}", made["id"])
    assert re.fullmatch(r"whsec_[0-9a-f]{64}", made["secret"])
    assert made["url"] == "https://hooks.example.com/campaigns" and made["events"] == EVENTS
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", made["created_at"])
    again = _create(client, tenant, events=["message.failed", "message.failed"]).json()
    assert again["secret"] != made["secret"] and again["events"] == ["message.failed"]

    listed = client.get("/v1/webhook-endpoints", headers=tenant.headers)
    assert listed.status_code == 200
    page = listed.json()
    assert page["meta"] == {"page": 1, "per_page": 50, "total": 2}
    assert [e["id"] for e in page["data"]] == [again["id"], made["id"]]  # newest first
    assert all("secret" not in e for e in page["data"]) and made["secret"] not in listed.text
    second = client.get("/v1/webhook-endpoints?page=2&per_page=1", headers=tenant.headers).json()
    assert [e["id"] for e in second["data"]] == [made["id"]] and second["meta"]["total"] == 2
    assert_error(
        client.get("/v1/webhook-endpoints?per_page=101", headers=tenant.headers), 400, "invalid_request"
    )


def test_delete_and_other_accounts(client: TestClient, tenant: Tenant, other: Tenant) -> None:
    mine = _create(client, tenant).json()["id"]
    assert client.get("/v1/webhook-endpoints", headers=other.headers).json()["meta"]["total"] == 0
    assert_error(client.delete(f"/v1/webhook-endpoints/{mine}", headers=other.headers), 404, "not_found")
    assert client.get("/v1/webhook-endpoints", headers=tenant.headers).json()["meta"]["total"] == 1
    r = client.delete(f"/v1/webhook-endpoints/{mine}", headers=tenant.headers)
    assert r.status_code == 204 and r.content == b""
    assert client.get("/v1/webhook-endpoints", headers=tenant.headers).json()["data"] == []
    assert_error(client.delete(f"/v1/webhook-endpoints/{mine}", headers=tenant.headers), 404, "not_found")
    assert_error(client.delete("/v1/webhook-endpoints/whe_nope", headers=tenant.headers), 404, "not_found")


def test_authentication_comes_first(client: TestClient) -> None:
    assert_error(client.get("/v1/webhook-endpoints"), 401, "unauthorized")
    assert_error(
        client.post("/v1/webhook-endpoints", json={"url": "https://a.example.com/", "events": EVENTS}),
        401,
        "unauthorized",
    )
    assert_error(client.delete("/v1/webhook-endpoints/whe_x"), 401, "unauthorized")


@pytest.mark.parametrize(
    "body",
    [
        {"url": "https://a.example.com/", "events": ["campaign.created"]},
        {"url": "https://a.example.com/", "events": []},
        {"url": "https://a.example.com/", "events": "message.failed"},
        {"url": "https://a.example.com/"},
        {"events": EVENTS},
        {"url": 5, "events": EVENTS},
        {"url": "ftp://a.example.com/", "events": EVENTS},
        {"url": "a.example.com/hook", "events": EVENTS},
        {"url": "https:///nohost", "events": EVENTS},
        {"url": "https://a.example.com:99999/", "events": EVENTS},
        {"url": "https://a.example.com/\nx", "events": EVENTS},
        {"url": "https://a.example.com/" + "x" * 2048, "events": EVENTS},
        [],
    ],
)
def test_schema_errors_are_400(client: TestClient, tenant: Tenant, body: Any) -> None:
    assert_error(
        client.post("/v1/webhook-endpoints", json=body, headers=tenant.headers), 400, "invalid_request"
    )


def test_malformed_json_is_400(client: TestClient, tenant: Tenant) -> None:
    r = client.post(
        "/v1/webhook-endpoints",
        content=b"{nope",
        headers={**tenant.headers, "Content-Type": "application/json"},
    )
    assert_error(r, 400, "invalid_request")


def test_a_url_of_2048_characters_is_fine(client: TestClient, tenant: Tenant) -> None:
    url = "https://a.example.com/"
    assert _create(client, tenant, url=url + "x" * (2048 - len(url))).status_code == 201


PRIVATE = [
    "http://127.0.0.1:8080/hook",
    "http://127.1/",
    "http://2130706433/",
    "http://localhost/hook",
    "http://LOCALHOST./hook",
    "http://api.localhost/hook",
    "http://[::1]/",
    "http://[::ffff:10.0.0.1]/",
    "http://10.0.0.1/",
    "http://172.16.5.4/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data",
    "http://0.0.0.0/",
    "http://[fe80::1]/",
]


@pytest.mark.parametrize("url", PRIVATE)
def test_private_targets_are_refused(client: TestClient, tenant: Tenant, url: str) -> None:
    payload = assert_error(_create(client, tenant, url=url), 422, "validation_error")
    assert payload["details"] == {"field": "url"}


@pytest.fixture
def open_client(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    allowing = settings.model_copy(update={"webhooks": WebhooksSettings(allow_private=True)})
    with TestClient(create_app(allowing, launcher=RecordingLauncher(), engine=engine)) as c:
        yield c


def test_private_targets_are_allowed_when_configured(open_client: TestClient, tenant: Tenant) -> None:
    for url in PRIVATE[:4]:
        assert _create(open_client, tenant, url=url).status_code == 201


def test_openapi_describes_the_routes(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    create = paths["/v1/webhook-endpoints"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/WebhookEndpointCreate"
    )
    assert create["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/WebhookEndpointCreated"
    )
    assert {"400", "401", "422", "429", "500"} <= set(create["responses"])
    assert create["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    listing = paths["/v1/webhook-endpoints"]["get"]["responses"]["200"]["content"]["application/json"]
    assert "WebhookEndpointPublic" in listing["schema"]["$ref"]
    delete = paths["/v1/webhook-endpoints/{endpoint_id}"]["delete"]["responses"]
    assert "204" in delete and "404" in delete and "content" not in delete["204"]
    events = spec["components"]["schemas"]["WebhookEventType"]["enum"]
    assert events == EVENTS
    assert "secret" not in spec["components"]["schemas"]["WebhookEndpointPublic"]["properties"]
