"""The API edge (SPEC §9): API keys, the OpenAPI document, body limits, input that used to
break the API."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from api.app import create_app
from core.db import session_scope
from core.settings import Settings
from models import ApiKey
from tests.conftest import RecordingLauncher
from tests.factories import make_tenant


def _error(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code and body["message"] and body["request_id"] == r.headers["x-request-id"]
    return body  # type: ignore[no-any-return]


# -- API keys --


def test_api_keys_create_list_revoke(client: TestClient, engine: Engine) -> None:
    t = make_tenant(engine)
    listed = client.get("/v1/api-keys", headers=t.headers).json()
    assert listed["meta"]["total"] == 1  # the key made with the account is listed
    first = listed["data"][0]
    assert first["prefix"] == t.api_key[:8] and first["revoked_at"] is None
    assert first["last_used_at"] is not None  # this very request used it
    assert t.api_key not in json.dumps(listed)

    r = client.post("/v1/api-keys", headers=t.headers, json={"name": "deploys"})
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["id"].startswith("key_") and made["prefix"] == made["api_key"][:8]
    assert made["name"] == "deploys" and made["created_at"].endswith("Z")
    new_headers = {"Authorization": f"Bearer {made['api_key']}"}
    assert client.get("/v1/credits", headers=new_headers).status_code == 200
    assert client.post("/v1/api-keys", headers=t.headers).status_code == 201  # no body at all
    assert client.post("/v1/api-keys", headers=t.headers, json={}).status_code == 201

    listed = client.get("/v1/api-keys", headers=t.headers).json()
    assert listed["meta"]["total"] == 4
    assert all("api_key" not in k and "key_hash" not in k for k in listed["data"])

    assert client.delete(f"/v1/api-keys/{made['id']}", headers=t.headers).status_code == 204
    _error(client.get("/v1/credits", headers=new_headers), 401, "unauthorized")
    revoked = [
        k for k in client.get("/v1/api-keys", headers=t.headers).json()["data"] if k["id"] == made["id"]
    ]
    assert revoked[0]["revoked_at"] is not None
    assert client.delete(f"/v1/api-keys/{made['id']}", headers=t.headers).status_code == 204  # idempotent


def test_another_accounts_key_is_404_and_bad_bodies_400(client: TestClient, engine: Engine) -> None:
    a = make_tenant(engine, name="a")
    b = make_tenant(engine, name="b", phone_base=14155560000)
    b_key = client.get("/v1/api-keys", headers=b.headers).json()["data"][0]["id"]
    _error(client.delete(f"/v1/api-keys/{b_key}", headers=a.headers), 404, "not_found")
    assert client.get("/v1/credits", headers=b.headers).status_code == 200
    _error(client.post("/v1/api-keys", headers=a.headers, json={"name": 5}), 400, "invalid_request")
    _error(client.post("/v1/api-keys", headers=a.headers, json={"name": "x" * 201}), 400, "invalid_request")


def test_a_revoked_key_is_refused_by_another_process_within_the_cache_ttl(
    settings: Settings, engine: Engine
) -> None:
    """Two API processes: one revokes, the other (which has the key cached) refuses it once its
    cache entry expires (CAMPAIGNS_API__KEY_CACHE_S)."""
    short = settings.model_copy(update={"api": settings.api.model_copy(update={"key_cache_s": 0.5})})
    t = make_tenant(engine)
    with (
        TestClient(create_app(short, launcher=RecordingLauncher(), engine=engine)) as one,
        TestClient(create_app(short, launcher=RecordingLauncher(), engine=engine)) as two,
    ):
        made = one.post("/v1/api-keys", headers=t.headers).json()
        h = {"Authorization": f"Bearer {made['api_key']}"}
        assert two.get("/v1/credits", headers=h).status_code == 200  # cached in `two` now
        assert one.delete(f"/v1/api-keys/{made['id']}", headers=t.headers).status_code == 204
        time.sleep(0.6)
        _error(two.get("/v1/credits", headers=h), 401, "unauthorized")


def test_last_used_at_is_written_at_most_once_a_minute(client: TestClient, engine: Engine) -> None:
    t = make_tenant(engine)
    client.get("/v1/credits", headers=t.headers)
    with session_scope(engine) as s:
        first = s.query(ApiKey).filter(ApiKey.account_id == t.account_id).one().last_used_at
    assert first is not None
    client.app.state.campaigns.keys.forget_all()  # type: ignore[attr-defined]
    client.get("/v1/credits", headers=t.headers)
    with session_scope(engine) as s:
        assert s.query(ApiKey).filter(ApiKey.account_id == t.account_id).one().last_used_at == first


def test_keys_cli(tmp_path: Any) -> None:
    from tests.test_cli import run

    acct = json.loads(run(tmp_path, "accounts", "create", "Acme", "--json").stdout)
    r = run(tmp_path, "keys", "create", acct["account_id"], "--json")
    assert r.returncode == 0, r.stderr
    made = json.loads(r.stdout)
    assert made["key_id"].startswith("key_") and made["api_key"].startswith(made["prefix"])
    listed = json.loads(run(tmp_path, "keys", "list", acct["account_id"], "--json").stdout)
    assert {k["id"] for k in listed} >= {made["key_id"]} and len(listed) == 2
    assert made["api_key"] not in json.dumps(listed)
    r = run(tmp_path, "keys", "revoke", made["key_id"], "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["revoked_at"]
    assert run(tmp_path, "keys", "revoke", "key_nope").returncode == 1
    assert run(tmp_path, "keys", "list", "acc_nope").returncode == 1


# -- OpenAPI --


@pytest.fixture
def doc(client: TestClient) -> dict[str, Any]:
    r = client.get("/openapi.json")
    assert r.status_code == 200
    return r.json()  # type: ignore[no-any-return]


def test_openapi_declares_bodies_responses_errors_and_bearer(doc: dict[str, Any]) -> None:
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "Authorization: Bearer <api_key>",
    }
    assert "HTTPValidationError" not in json.dumps(doc)
    error_ref = "#/components/schemas/ErrorBody"
    for path, item in doc["paths"].items():
        for method, op in item.items():
            responses = op["responses"]
            where = f"{method.upper()} {path}"
            assert any(s.startswith("2") for s in responses), where
            for status, resp in responses.items():
                if status.startswith(("4", "5")):
                    assert resp["content"]["application/json"]["schema"] == {"$ref": error_ref}, where
                    if status == "422":
                        assert "HTTPValidationError" not in json.dumps(resp), where
            if path.startswith("/v1/") and not path.startswith(("/v1/webhooks/", "/v1/unsubscribe/")):
                assert op.get("security") == [{"bearer": []}], where
                assert {"400", "401", "429", "500"} <= set(responses), where
            if "requestBody" in op:
                assert "413" in responses, where
    create = doc["paths"]["/v1/campaigns"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CampaignCreate"
    }
    ok = create["responses"]["201"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/CampaignPublic"}
    schemas = doc["components"]["schemas"]
    assert {"CampaignPublic", "MessagePublic", "ContactPublic", "ErrorBody"} <= set(schemas)
    assert schemas["CampaignPublic"].get("examples")
    assert set(schemas["ErrorBody"]["required"]) == {"error", "message", "details", "request_id"}


def test_responses_match_their_declared_models(client: TestClient, engine: Engine) -> None:
    """A campaign, a contact and their pages validate against the public models."""
    from models.public import CampaignPublic, ContactPublic, MessagePublic, Page

    t = make_tenant(engine)
    r = client.post(
        "/v1/campaigns",
        headers=t.headers,
        json={
            "name": "x",
            "channel": "sms",
            "contact_list_id": t.list_id,
            "sender_id": t.sender,
            "body": "hi",
        },
    )
    assert r.status_code == 201, r.text
    CampaignPublic.model_validate(r.json(), strict=True)
    Page[CampaignPublic].model_validate(client.get("/v1/campaigns", headers=t.headers).json())
    Page[ContactPublic].model_validate(client.get("/v1/contacts", headers=t.headers).json())
    Page[MessagePublic].model_validate(
        client.get(f"/v1/campaigns/{r.json()['id']}/messages", headers=t.headers).json()
    )


# -- limits --


@pytest.fixture
def small(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    api = settings.api.model_copy(
        update={"max_body_bytes": 2048, "max_import_bytes": 4096, "max_webhook_bytes": 1024}
    )
    app = create_app(settings.model_copy(update={"api": api}), launcher=RecordingLauncher(), engine=engine)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_bodies_over_the_limit_are_413_before_parsing(small: TestClient, engine: Engine) -> None:
    t = make_tenant(engine)
    big = {"name": "x", "phone": "+14155550999", "attributes": {"a": "b" * 3000}}
    body = _error(small.post("/v1/contacts", headers=t.headers, json=big), 413, "payload_too_large")
    assert body["details"] == {"max_bytes": 2048}

    def chunked(data: bytes) -> Iterator[bytes]:  # no Content-Length: streamed
        for i in range(0, len(data), 500):
            yield data[i : i + 500]

    raw = json.dumps(big).encode()
    r = small.post(
        "/v1/contacts", headers={**t.headers, "Content-Type": "application/json"}, content=chunked(raw)
    )
    _error(r, 413, "payload_too_large")
    # The import has its own, larger limit.
    rows = [{"name": f"n{i}", "phone": f"+1415556{i:04d}"} for i in range(60)]
    assert 2048 < len(json.dumps(rows)) < 4096
    assert small.post("/v1/contacts/import", headers=t.headers, json=rows).status_code == 200
    _error(small.post("/v1/contacts/import", headers=t.headers, json=rows * 2), 413, "payload_too_large")
    # Provider webhooks: limited before the signature is looked at.
    r = small.post("/v1/webhooks/twilio/status", data={"MessageSid": "SM1", "Junk": "x" * 2000})
    _error(r, 413, "payload_too_large")
    with session_scope(engine) as s:
        assert s.query(ApiKey).count() >= 1  # nothing else happened; the contact was not created
    assert small.get("/v1/contacts", headers=t.headers).json()["meta"]["total"] == 3 + 60


def test_deeply_nested_json_is_400_not_500(client: TestClient, engine: Engine) -> None:
    t = make_tenant(engine)
    nested = "[" * 100_000 + "]" * 100_000
    h = {**t.headers, "Content-Type": "application/json"}
    for path in ("/v1/campaigns", "/v1/contacts", "/v1/contacts/import", "/v1/api-keys"):
        _error(client.post(path, headers=h, content=nested), 400, "invalid_request")
    obj = '{"a":' * 50_000 + "1" + "}" * 50_000
    _error(client.post("/v1/contacts", headers=h, content=obj), 400, "invalid_request")


def test_schema_errors_name_the_field(client: TestClient, engine: Engine) -> None:
    t = make_tenant(engine)
    body = _error(client.post("/v1/contacts", headers=t.headers, json={"name": "a"}), 400, "invalid_request")
    assert body["message"].startswith("phone:")
    assert body["details"]["errors"][0]["field"] == "phone"
    h = {**t.headers, "Content-Type": "application/json"}
    assert _error(client.post("/v1/contacts", headers=h, content="{"), 400, "invalid_request")["message"] == (
        "malformed JSON"
    )
    r = client.post("/v1/contacts", headers=h, content="[1]")
    assert _error(r, 400, "invalid_request")["message"] == "request body must be a JSON object"
    r = client.get("/v1/campaigns?status=bogus", headers=t.headers)
    assert _error(r, 400, "invalid_request")["details"]["errors"][0]["field"] == "status"


def test_a_body_that_does_not_parse_is_still_401_without_a_key(client: TestClient, engine: Engine) -> None:
    """SPEC order: authentication before schema errors, even when FastAPI parsed the body first."""
    t = make_tenant(engine)
    h = {"Content-Type": "application/json"}
    for content in ("{", "[" * 100_000):
        _error(client.post("/v1/campaigns", headers=h, content=content), 401, "unauthorized")
        bad = {**h, "Authorization": "Bearer nope"}
        _error(client.post("/v1/contacts", headers=bad, content=content), 401, "unauthorized")
        _error(
            client.post("/v1/contacts", headers={**h, **t.headers}, content=content), 400, "invalid_request"
        )


def test_moderately_deep_bodies_huge_numbers_and_nul_in_urls_are_400(
    client: TestClient, engine: Engine
) -> None:
    """Found in review: a body nested ~450 levels deep parsed fine and then overflowed a recursive
    validator (500); an integer over 4,300 digits broke the import's parser (500); a NUL in a
    path or query reached PostgreSQL (500)."""
    t = make_tenant(engine)
    h = {**t.headers, "Content-Type": "application/json"}
    for depth in (450, 900):
        junk = "[" * depth + "]" * depth
        contact = '{"name": "x", "phone": "+14155559999", "junk": ' + junk + "}"
        r = client.post("/v1/contacts", headers=h, content=contact)
        assert r.status_code in (201, 400, 409), r.text
        r = client.post("/v1/contacts/import", headers=h, content=f"[{contact}]")
        assert r.status_code in (200, 400), r.text
        r = client.post("/v1/api-keys", headers=h, content='{"name": "k", "junk": ' + junk + "}")
        assert r.status_code in (201, 400), r.text
    huge = "1" * 5000
    r = client.post(
        "/v1/contacts/import", headers=h, content='[{"name": "x", "phone": "+1", "n": ' + huge + "}]"
    )
    _error(r, 400, "invalid_request")
    _error(client.post("/v1/api-keys", headers=t.headers, json={"name": "a\x00b"}), 400, "invalid_request")
    _error(client.get("/v1/campaigns/cmp_%00x", headers=t.headers), 400, "invalid_request")
    _error(client.get("/v1/contacts?list_id=%00", headers=t.headers), 400, "invalid_request")
