"""POST/GET/cancel campaigns over HTTP (TestClient, recording launcher, no Prefect)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from api.app import create_app
from core.settings import Settings
from tests.conftest import RecordingLauncher
from tests.factories import Tenant, make_tenant


def body(tenant: Tenant, **over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "Weekend Sale - June 2026",
        "channel": "sms",
        "contact_list_id": tenant.list_id,
        "sender_id": tenant.sender,
        "body": "Hi {{first_name}}",
    }
    data.update(over)
    return {k: v for k, v in data.items() if v is not None}


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["error"] == code
    assert isinstance(payload["message"], str) and payload["message"]
    assert "details" in payload
    assert payload["request_id"].startswith("req_")
    assert response.headers["X-Request-ID"] == payload["request_id"]
    return payload


@pytest.fixture
def tenant(engine: Engine) -> Tenant:
    return make_tenant(engine, credits_amount=100, contacts_n=3)


def credits_of(client: TestClient, tenant: Tenant) -> dict[str, int]:
    return client.get("/v1/credits", headers=tenant.headers).json()


def test_create_returns_the_campaign_and_starts_its_flow_run(
    client: TestClient, tenant: Tenant, launcher: RecordingLauncher
) -> None:
    r = client.post("/v1/campaigns", json=body(tenant), headers=tenant.headers)
    assert r.status_code == 201, r.text
    c = r.json()
    assert c["id"].startswith("cmp_") and len(c["id"]) >= 4 + 24
    assert c["status"] == "draft"
    assert (c["total_recipients"], c["delivered_count"], c["failed_count"]) == (3, 0, 0)
    assert c["created_at"].endswith("Z") and c["started_at"] is None
    assert launcher.launched == [
        {
            "campaign_id": c["id"],
            "account_id": tenant.account_id,
            "channel": "sms",
            "scheduled_at": None,
            "key": None,
            "name": "Weekend Sale - June 2026",
            "schedule_id": None,
        }
    ]
    assert credits_of(client, tenant) == {"balance": 100, "reserved": 3, "available": 97}
    got = client.get(f"/v1/campaigns/{c['id']}", headers=tenant.headers).json()
    assert got["flow_run_id"] == f"fr-{c['id']}"
    assert r.headers["X-Request-ID"].startswith("req_")


def test_scheduled_campaign(client: TestClient, tenant: Tenant, launcher: RecordingLauncher) -> None:
    when = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    r = client.post(
        "/v1/campaigns",
        headers=tenant.headers,
        json=body(tenant, scheduled_at=when.isoformat().replace("+00:00", "Z")),
    )
    assert r.status_code == 201
    assert r.json()["status"] == "scheduled"
    assert r.json()["scheduled_at"] == when.isoformat().replace("+00:00", "Z")
    assert launcher.launched[0]["scheduled_at"] == when


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({}, "missing"),
        ({"Authorization": "Basic abc"}, "malformed"),
        ({"Authorization": "Bearer nope"}, "unknown"),
    ],
)
def test_authentication_comes_first(client: TestClient, headers: dict[str, str], why: str) -> None:
    assert_error(client.post("/v1/campaigns", content=b"{not json", headers=headers), 401, "unauthorized")
    assert_error(client.get("/v1/campaigns", headers=headers), 401, "unauthorized")


@pytest.mark.parametrize(
    "patch",
    [
        {"name": None},
        {"name": ""},
        {"name": "x" * 201},
        {"channel": "fax"},
        {"channel": None},
        {"contact_list_id": None},
        {"sender_id": None},
        {"scheduled_at": "tomorrow at noon"},
        {"body": 42},
        {"name": 7},
    ],
)
def test_schema_errors_are_400(
    client: TestClient, tenant: Tenant, launcher: RecordingLauncher, patch: dict[str, Any]
) -> None:
    data = body(tenant)
    for key, value in patch.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    # Schema errors win over a list that does not exist (SPEC order: 400 before 404).
    if "contact_list_id" not in patch:
        data["contact_list_id"] = "lst_missing"
    assert_error(client.post("/v1/campaigns", json=data, headers=tenant.headers), 400, "invalid_request")
    assert launcher.launched == []


def test_malformed_json_is_400(client: TestClient, tenant: Tenant) -> None:
    assert_error(
        client.post("/v1/campaigns", content=b'{"name": ', headers=tenant.headers), 400, "invalid_request"
    )
    assert_error(client.post("/v1/campaigns", json=[1, 2], headers=tenant.headers), 400, "invalid_request")


def test_unknown_list_is_404_before_422(client: TestClient, tenant: Tenant) -> None:
    r = client.post(
        "/v1/campaigns",
        headers=tenant.headers,
        json=body(tenant, contact_list_id="lst_000000000000000000000000", sender_id="NOPE"),
    )
    assert_error(r, 404, "not_found")


@pytest.mark.parametrize(
    "patch",
    [
        {"sender_id": "OTHER"},
        {"body": None},
        {"template": {"name": "promo", "language": "en_US"}},
        {"scheduled_at": "2020-01-01T00:00:00Z"},
        {"body": "x" * 1601},
        {"body": "Hi {{surname}}"},
        {"body": "   "},
    ],
)
def test_semantic_errors_are_422(
    client: TestClient, tenant: Tenant, launcher: RecordingLauncher, patch: dict[str, Any]
) -> None:
    data = body(tenant)
    for key, value in patch.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    assert_error(client.post("/v1/campaigns", json=data, headers=tenant.headers), 422, "validation_error")
    assert credits_of(client, tenant)["reserved"] == 0
    assert client.get("/v1/campaigns", headers=tenant.headers).json()["meta"]["total"] == 0
    assert launcher.launched == []


def test_pending_sender_id_is_not_usable(client: TestClient, tenant: Tenant) -> None:
    r = client.post("/v1/sender-ids", json={"value": "NEWBRAND", "channel": "sms"}, headers=tenant.headers)
    assert r.status_code == 201 and r.json()["status"] == "pending"
    assert_error(
        client.post("/v1/campaigns", json=body(tenant, sender_id="NEWBRAND"), headers=tenant.headers),
        422,
        "validation_error",
    )
    # An approved sender of another channel is no good either.
    assert_error(
        client.post("/v1/campaigns", json=body(tenant, channel="email"), headers=tenant.headers),
        422,
        "validation_error",
    )


def test_sender_can_be_referenced_by_id(client: TestClient, tenant: Tenant) -> None:
    sid = client.get("/v1/sender-ids", headers=tenant.headers).json()["data"][0]["id"]
    assert (
        client.post("/v1/campaigns", json=body(tenant, sender_id=sid), headers=tenant.headers).status_code
        == 201
    )


def test_insufficient_credits(client: TestClient, engine: Engine, launcher: RecordingLauncher) -> None:
    poor = make_tenant(engine, credits_amount=2, contacts_n=3, name="poor")
    payload = assert_error(
        client.post("/v1/campaigns", json=body(poor), headers=poor.headers), 422, "insufficient_credits"
    )
    assert payload["details"] == {"required": 3, "available": 2}
    assert credits_of(client, poor) == {"balance": 2, "reserved": 0, "available": 2}
    assert launcher.launched == []


def test_idempotency_key(client: TestClient, tenant: Tenant, launcher: RecordingLauncher) -> None:
    headers = {**tenant.headers, "Idempotency-Key": "order-42"}
    first = client.post("/v1/campaigns", json=body(tenant), headers=headers)
    again = client.post("/v1/campaigns", json=body(tenant), headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    assert len(launcher.launched) == 1
    assert credits_of(client, tenant)["reserved"] == 3
    assert_error(
        client.post("/v1/campaigns", json=body(tenant, name="other"), headers=headers), 409, "conflict"
    )
    assert client.get("/v1/campaigns", headers=tenant.headers).json()["meta"]["total"] == 1


def test_accounts_are_isolated(client: TestClient, engine: Engine, tenant: Tenant) -> None:
    other = make_tenant(engine, name="other", phone_base=14155560000)
    cid = client.post("/v1/campaigns", json=body(tenant), headers=tenant.headers).json()["id"]
    assert_error(client.get(f"/v1/campaigns/{cid}", headers=other.headers), 404, "not_found")
    assert_error(client.post(f"/v1/campaigns/{cid}/cancel", headers=other.headers), 404, "not_found")
    assert_error(client.get(f"/v1/campaigns/{cid}/messages", headers=other.headers), 404, "not_found")
    # Another account's list is unknown too.
    assert_error(
        client.post("/v1/campaigns", json=body(tenant, sender_id=other.sender), headers=other.headers),
        404,
        "not_found",
    )
    assert client.get("/v1/campaigns", headers=other.headers).json()["meta"]["total"] == 0


def test_pagination(client: TestClient, tenant: Tenant) -> None:
    ids = [
        client.post("/v1/campaigns", json=body(tenant, name=f"c{i}"), headers=tenant.headers).json()["id"]
        for i in range(5)
    ]
    page1 = client.get("/v1/campaigns?per_page=2", headers=tenant.headers).json()
    page3 = client.get("/v1/campaigns?per_page=2&page=3", headers=tenant.headers).json()
    assert page1["meta"] == {"page": 1, "per_page": 2, "total": 5}
    assert [c["id"] for c in page1["data"]] == ids[::-1][:2]  # newest first
    assert [c["id"] for c in page3["data"]] == ids[:1]
    for bad in ("page=0", "per_page=0", "per_page=101", "page=x"):
        assert_error(client.get(f"/v1/campaigns?{bad}", headers=tenant.headers), 400, "invalid_request")
    assert_error(client.get("/v1/campaigns?status=bogus", headers=tenant.headers), 400, "invalid_request")
    assert (
        client.get("/v1/campaigns?status=draft&channel=sms", headers=tenant.headers).json()["meta"]["total"]
        == 5
    )


def test_cancel_releases_credits_and_is_final(
    client: TestClient, tenant: Tenant, launcher: RecordingLauncher
) -> None:
    cid = client.post("/v1/campaigns", json=body(tenant), headers=tenant.headers).json()["id"]
    r = client.post(f"/v1/campaigns/{cid}/cancel", headers=tenant.headers)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert r.json()["cancelled_at"].endswith("Z")
    assert launcher.cancelled == [f"fr-{cid}"]
    assert credits_of(client, tenant) == {"balance": 100, "reserved": 0, "available": 100}
    assert_error(client.post(f"/v1/campaigns/{cid}/cancel", headers=tenant.headers), 409, "conflict")


def test_messages_listing(client: TestClient, tenant: Tenant, engine: Engine) -> None:
    from tests.factories import start_campaign

    cid = client.post("/v1/campaigns", json=body(tenant), headers=tenant.headers).json()["id"]
    start_campaign(engine, cid)
    r = client.get(f"/v1/campaigns/{cid}/messages?per_page=2", headers=tenant.headers).json()
    assert r["meta"] == {"page": 1, "per_page": 2, "total": 3}
    first = r["data"][0]
    assert set(first) >= {
        "id",
        "contact_id",
        "to",
        "status",
        "provider_message_id",
        "error_code",
        "error_message",
        "sent_at",
        "updated_at",
    }
    assert first["id"].startswith("msg_") and first["status"] == "pending"
    assert (
        client.get(f"/v1/campaigns/{cid}/messages?status=delivered", headers=tenant.headers).json()["meta"][
            "total"
        ]
        == 0
    )
    c = client.get(f"/v1/campaigns/{cid}", headers=tenant.headers).json()
    assert (c["status"], c["pending_count"]) == ("processing", 3)


def test_contacts_without_an_address_are_skipped(client: TestClient, engine: Engine) -> None:
    t = make_tenant(engine, contacts_n=2, channel="email", sender="news@example.com")
    cid = client.post(
        "/v1/contacts",
        headers=t.headers,
        json={"name": "No Mail", "phone": "+14155559999", "lists": [t.list_id]},
    ).json()["id"]
    assert cid.startswith("cnt_")
    c = client.post(
        "/v1/campaigns",
        headers=t.headers,
        json={
            "name": "News",
            "channel": "email",
            "contact_list_id": t.list_id,
            "sender_id": "news@example.com",
            "body": "Hello",
        },
    ).json()
    assert (c["total_recipients"], c["skipped_count"], c["subject"]) == (2, 1, "News")


def test_rate_limit(settings: Settings, engine: Engine, tenant: Tenant) -> None:
    limited = settings.model_copy(
        update={"api": settings.api.model_copy(update={"rate_per_second": 1, "burst": 3})}
    )
    with TestClient(create_app(limited, launcher=RecordingLauncher(), engine=engine)) as client:
        codes = [client.get("/v1/credits", headers=tenant.headers).status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and codes[3] == 429
        r = client.get("/v1/credits", headers=tenant.headers)
        payload = assert_error(r, 429, "rate_limit_exceeded")
        assert int(r.headers["Retry-After"]) >= 1
        assert payload["details"]["retry_after"] >= 1


def test_unknown_routes_and_methods_use_the_error_body(client: TestClient, tenant: Tenant) -> None:
    assert_error(client.get("/v1/nothing-here", headers=tenant.headers), 404, "not_found")
    assert_error(client.delete("/v1/credits", headers=tenant.headers), 405, "method_not_allowed")


def test_healthz_needs_no_key(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_launch_failure_keeps_the_campaign_for_the_reconciler(
    client: TestClient, tenant: Tenant, launcher: RecordingLauncher
) -> None:
    launcher.fail = True
    r = client.post("/v1/campaigns", json=body(tenant), headers=tenant.headers)
    assert r.status_code == 201
    assert r.json()["flow_run_id"] is None and r.json()["status"] == "draft"


def test_big_campaigns_report_stored_counts(client: TestClient, tenant: Tenant, engine: Engine) -> None:
    from sqlalchemy import update

    from core import campaigns, counts
    from core.db import session_scope

    cid = client.post("/v1/campaigns", json=body(tenant), headers=tenant.headers).json()["id"]
    with session_scope(engine) as session:
        session.execute(
            update(campaigns.Campaign)
            .where(campaigns.Campaign.id == cid)
            .values(
                total_recipients=counts.LIVE_COUNT_LIMIT + 1,
                status_counts={
                    "delivered": 40_000,
                    "undelivered": 5,
                    "failed": 7,
                    "sent": 2,
                    "pending": 9_997,
                },
            )
        )
    c = client.get(f"/v1/campaigns/{cid}", headers=tenant.headers).json()
    assert (c["delivered_count"], c["failed_count"], c["sent_count"], c["pending_count"]) == (
        40_000,
        12,
        2,
        9_997,
    )
    listed = client.get("/v1/campaigns", headers=tenant.headers).json()["data"][0]
    assert listed["delivered_count"] == 40_000


def test_rate_limit_is_shared_by_api_processes_on_postgres(settings: Settings, pg_engine: Engine) -> None:
    limited = settings.model_copy(
        update={"api": settings.api.model_copy(update={"rate_per_second": 0.2, "burst": 2})}
    )
    tenant = make_tenant(pg_engine, name="pg-rate", phone_base=14170000000)
    apps = [TestClient(create_app(limited, launcher=RecordingLauncher(), engine=pg_engine)) for _ in range(2)]
    codes = [apps[i % 2].get("/v1/credits", headers=tenant.headers).status_code for i in range(3)]
    assert codes == [200, 200, 429]  # the second "process" saw the first one's requests
