"""Contacts, contact lists, sender IDs and credits over HTTP."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from tests.api.test_campaigns import assert_error
from tests.factories import Tenant, make_tenant


@pytest.fixture
def tenant(engine: Engine) -> Tenant:
    return make_tenant(engine, contacts_n=0)


def test_contact_lifecycle(client: TestClient, tenant: Tenant) -> None:
    h = tenant.headers
    lst = client.post("/v1/contact-lists", json={"name": "VIP"}, headers=h).json()
    assert lst["id"].startswith("lst_") and lst["contact_count"] == 0
    r = client.post(
        "/v1/contacts",
        headers=h,
        json={
            "name": "Ada Lovelace",
            "phone": "+447700900123",
            "email": "ada@example.com",
            "attributes": {"tier": "gold"},
            "lists": [lst["id"]],
        },
    )
    assert r.status_code == 201, r.text
    contact = r.json()
    assert contact["lists"] == [lst["id"]] and contact["attributes"] == {"tier": "gold"}
    assert client.get(f"/v1/contact-lists/{lst['id']}", headers=h).json()["contact_count"] == 1
    r = client.patch(f"/v1/contacts/{contact['id']}", headers=h, json={"name": "Ada L.", "subscribed": False})
    assert r.json()["name"] == "Ada L." and r.json()["subscribed"] is False
    listed = client.get(f"/v1/contacts?list_id={lst['id']}", headers=h).json()
    assert [c["id"] for c in listed["data"]] == [contact["id"]]
    assert (
        client.delete(f"/v1/contact-lists/{lst['id']}/contacts/{contact['id']}", headers=h).status_code == 204
    )
    assert client.get(f"/v1/contact-lists/{lst['id']}", headers=h).json()["contact_count"] == 0
    added = client.post(
        f"/v1/contact-lists/{lst['id']}/contacts", headers=h, json={"contact_ids": [contact["id"]]}
    )
    assert added.status_code == 200 and added.json()["contact_count"] == 1
    assert client.delete(f"/v1/contacts/{contact['id']}", headers=h).status_code == 204
    assert_error(client.get(f"/v1/contacts/{contact['id']}", headers=h), 404, "not_found")
    assert client.delete(f"/v1/contact-lists/{lst['id']}", headers=h).status_code == 204
    assert_error(client.get(f"/v1/contact-lists/{lst['id']}", headers=h), 404, "not_found")


def test_contact_errors(client: TestClient, tenant: Tenant, engine: Engine) -> None:
    h = tenant.headers
    ok = {"name": "A", "phone": "+14155550100"}
    assert client.post("/v1/contacts", json=ok, headers=h).status_code == 201
    assert_error(client.post("/v1/contacts", json=ok, headers=h), 409, "conflict")
    assert_error(
        client.post("/v1/contacts", json={"name": "B", "phone": "0155 5501"}, headers=h),
        422,
        "validation_error",
    )
    assert_error(
        client.post(
            "/v1/contacts", json={"name": "B", "phone": "+14155550101", "email": "not-an-email"}, headers=h
        ),
        422,
        "validation_error",
    )
    assert_error(
        client.post(
            "/v1/contacts", json={"name": "B", "phone": "+14155550102", "lists": ["lst_unknown"]}, headers=h
        ),
        404,
        "not_found",
    )
    assert_error(
        client.post("/v1/contacts", json={"phone": "+14155550103"}, headers=h), 400, "invalid_request"
    )
    assert client.get("/v1/contacts", headers=h).json()["meta"]["total"] == 1
    # The same phone is fine on another account.
    other = make_tenant(engine, contacts_n=0, name="other")
    assert client.post("/v1/contacts", json=ok, headers=other.headers).status_code == 201


def test_sender_ids_validate_format_per_channel(client: TestClient, tenant: Tenant) -> None:
    h = tenant.headers
    good = [
        ("sms", "SHOP24"),
        ("sms", "+14155550100"),
        ("whatsapp", "106540352242922"),
        ("email", "news@example.com"),
        ("telegram", "shop_news_bot"),
        ("slack", "Shop Bot"),
    ]
    for channel, value in good:
        r = client.post("/v1/sender-ids", json={"channel": channel, "value": value}, headers=h)
        assert r.status_code == 201, (channel, value, r.text)
        assert r.json()["status"] == "pending" and r.json()["id"].startswith("sid_")
    bad = [
        ("sms", "WAY_TOO_LONG_NAME"),
        ("sms", "12345"),
        ("whatsapp", "+1415"),
        ("email", "nope"),
        ("telegram", "shop"),
    ]
    for channel, value in bad:
        assert_error(
            client.post("/v1/sender-ids", json={"channel": channel, "value": value}, headers=h),
            422,
            "validation_error",
        )
    assert_error(
        client.post("/v1/sender-ids", json={"channel": "sms", "value": "SHOP24"}, headers=h), 409, "conflict"
    )
    listed = client.get("/v1/sender-ids", headers=h).json()
    assert listed["meta"]["total"] == len(good) + 1  # plus the factory's approved one


def test_credits(client: TestClient, tenant: Tenant) -> None:
    assert client.get("/v1/credits", headers=tenant.headers).json() == {
        "balance": 1000,
        "reserved": 0,
        "available": 1000,
    }
