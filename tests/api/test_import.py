"""Bulk import: JSON and CSV, upsert by phone, per-row rejections, lists."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from core.importer import normalize_phone
from tests.api.test_campaigns import assert_error
from tests.factories import Tenant, make_tenant


@pytest.fixture
def tenant(engine: Engine) -> Tenant:
    return make_tenant(engine, contacts_n=1)  # +14155550000 exists already


def test_json_import_upserts_and_rejects_row_by_row(client: TestClient, tenant: Tenant) -> None:
    rows = [
        {"name": "Existing Renamed", "phone": "+1 415 555 0000", "attributes": {"tier": "gold"}},
        {"name": "New One", "phone": "+44 7700 900123", "email": "new@example.com"},
        {"name": "No Phone"},
        {"name": "Bad Phone", "phone": "12345"},
        {"name": "Bad Email", "phone": "+14155550111", "email": "nope"},
        {"name": "Twice", "phone": "+447700900123"},
        {"name": "Bad List", "phone": "+14155550112", "lists": ["lst_missing"]},
        "not an object",
    ]
    r = client.post(f"/v1/contacts/import?list_id={tenant.list_id}", json=rows, headers=tenant.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["created"], body["updated"], body["rejected"]) == (1, 1, 6)
    assert [x["row"] for x in body["rejected_rows"]] == [3, 4, 5, 6, 7, 8]
    assert "duplicate phone" in body["rejected_rows"][3]["reason"]
    listed = client.get(f"/v1/contacts?list_id={tenant.list_id}", headers=tenant.headers).json()
    by_phone = {c["phone"]: c for c in listed["data"]}
    assert set(by_phone) == {"+14155550000", "+447700900123"}
    assert by_phone["+14155550000"]["name"] == "Existing Renamed"
    assert by_phone["+14155550000"]["attributes"] == {"tier": "gold"}
    assert client.get("/v1/contacts", headers=tenant.headers).json()["meta"]["total"] == 2


def test_csv_import(client: TestClient, tenant: Tenant) -> None:
    other = client.post("/v1/contact-lists", json={"name": "vip"}, headers=tenant.headers).json()["id"]
    csv_body = (
        "name,phone,email,lists,attributes.code,city\n"
        f"Ada,+14155550201,ada@example.com,{other},A1,London\n"
        "Grace,+14155550202,,,,\n"
        "Broken,not-a-phone,,,,\n"
    )
    r = client.post(
        "/v1/contacts/import",
        content=csv_body.encode(),
        headers={**tenant.headers, "Content-Type": "text/csv"},
    )
    assert r.status_code == 200, r.text
    assert (r.json()["created"], r.json()["rejected"]) == (2, 1)
    vip = client.get(f"/v1/contacts?list_id={other}", headers=tenant.headers).json()["data"]
    assert [(c["name"], c["attributes"]) for c in vip] == [("Ada", {"code": "A1", "city": "London"})]


def test_import_errors(client: TestClient, tenant: Tenant) -> None:
    assert_error(
        client.post("/v1/contacts/import?list_id=lst_nope", json=[], headers=tenant.headers), 404, "not_found"
    )
    assert_error(
        client.post("/v1/contacts/import", json={"name": "x"}, headers=tenant.headers), 400, "invalid_request"
    )
    too_many = [{"name": "x", "phone": "+14155550100"}] * 100_001
    assert_error(
        client.post("/v1/contacts/import", json=too_many, headers=tenant.headers), 422, "validation_error"
    )
    assert_error(client.post("/v1/contacts/import", json=[]), 401, "unauthorized")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+14155550100", "+14155550100"),
        ("+1 (415) 555-0100", "+14155550100"),
        ("+44 7700 900123", "+447700900123"),
        ("4155550100", None),
        ("+1", None),
        ("hello", None),
    ],
)
def test_phone_normalisation(raw: str, expected: str | None) -> None:
    assert normalize_phone(raw) == expected
