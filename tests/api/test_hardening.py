"""Regression tests for input hardening at the HTTP edge (issue 9): no input yields a 500, and
every stored string has a maximum length enforced as 400/422."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from api.app import create_app
from core.settings import Settings
from tests.api.test_campaigns import assert_error, body
from tests.api.test_webhooks import APP_SECRET, hooks  # noqa: F401 (a fixture)
from tests.conftest import RecordingLauncher
from tests.factories import Tenant, make_tenant
from tests.providers.fake_server import hub_signature

HUGE = "x" * 100_000


@pytest.fixture
def tenant(engine: Engine) -> Tenant:
    return make_tenant(engine, credits_amount=1000, contacts_n=2)


@pytest.fixture
def wa_tenant(engine: Engine) -> Tenant:
    return make_tenant(engine, credits_amount=1000, contacts_n=2, channel="whatsapp", sender="1065550100")


def _template(**over: Any) -> dict[str, Any]:
    template: dict[str, Any] = {
        "name": "order_update",
        "language": {"code": "en_US"},
        "components": [
            {"type": "header", "parameters": [{"type": "image", "image": {"link": "https://x.test/a.png"}}]},
            {"type": "body", "parameters": [{"type": "text", "text": "{{first_name}}"}]},
            {
                "type": "button",
                "sub_type": "quick_reply",
                "index": "0",
                "parameters": [{"type": "payload", "payload": "STOP_PROMOS"}],
            },
            {
                "type": "button",
                "sub_type": "url",
                "index": 1,
                "parameters": [{"type": "text", "text": "track/42"}],
            },
        ],
    }
    template.update(over)
    return template


def _wa_body(tenant: Tenant, template: Any) -> dict[str, Any]:
    return body(tenant, channel="whatsapp", body=None, template=template)


# -- 2: WhatsApp template components are typed --


@pytest.mark.parametrize(
    "components",
    [
        [{"parameters": 5}],
        [{"type": "body", "parameters": 5}],
        [{"type": "body", "parameters": [5]}],
        [{"type": "body", "parameters": [{"text": "no type"}]}],
        [{"type": "body", "parameters": [{"type": "text", "text": 5}]}],
        [5],
        {"type": "body"},
        [{"type": 7}],
        [{"type": "button", "index": {"x": 1}}],
        [{"type": "body", "parameters": [{"type": "text", "text": HUGE}]}],
        [{"type": "body", "parameters": [{"type": "image", "image": {"link": HUGE}}]}],
        [{"type": "body"}] * 1000,
    ],
)
def test_malformed_template_components_are_400(
    client: TestClient, wa_tenant: Tenant, components: Any
) -> None:
    r = client.post(
        "/v1/campaigns", json=_wa_body(wa_tenant, _template(components=components)), headers=wa_tenant.headers
    )
    assert_error(r, 400, "invalid_request")


def test_a_cloud_api_template_is_sent_as_given(client: TestClient, wa_tenant: Tenant, engine: Engine) -> None:
    r = client.post("/v1/campaigns", json=_wa_body(wa_tenant, _template()), headers=wa_tenant.headers)
    assert r.status_code == 201, r.text
    from core.db import session_scope
    from models import Campaign

    with session_scope(engine) as session:
        stored = session.get(Campaign, r.json()["id"])
        assert stored is not None and stored.template == _template()


# -- 3: signature headers that are not ASCII --


def test_a_non_ascii_twilio_signature_is_403(hooks: TestClient) -> None:  # noqa: F811
    for path in ("/v1/webhooks/twilio/status", "/v1/webhooks/twilio/inbound"):
        r = hooks.post(path, data={"MessageSid": "SM1"}, headers={"X-Twilio-Signature": "é✓".encode()})
        assert_error(r, 403, "forbidden")


def test_a_non_ascii_hub_signature_is_403(hooks: TestClient) -> None:  # noqa: F811
    for header in ("sha256=é".encode(), "sha256=✓".encode(), b"\xff\xfe"):
        r = hooks.post("/v1/webhooks/whatsapp", content=b"{}", headers={"X-Hub-Signature-256": header})
        assert_error(r, 403, "forbidden")


# -- 13: nested JSON and odd shapes in bodies parsed by hand --


def _signed(client: TestClient, raw: bytes) -> Any:
    return client.post(
        "/v1/webhooks/whatsapp", content=raw, headers={"X-Hub-Signature-256": hub_signature(raw, APP_SECRET)}
    )


def test_deeply_nested_webhook_json_is_400(hooks: TestClient) -> None:  # noqa: F811
    assert_error(_signed(hooks, b"[" * 100_000), 400, "invalid_request")
    assert_error(_signed(hooks, b'{"entry":' * 20_000), 400, "invalid_request")


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {"entry": 5},
        {"entry": [1]},
        {"entry": [{"changes": 5}]},
        {"entry": [{"changes": [{"value": []}]}]},
        {"entry": [{"changes": [{"value": {"statuses": [7, None]}}]}]},
        {
            "entry": [
                {"changes": [{"value": {"statuses": [{"id": "wamid.1", "status": "failed", "errors": 5}]}}]}
            ]
        },
        {
            "entry": [
                {"changes": [{"value": {"statuses": [{"id": "wamid.1", "status": "failed", "errors": [3]}]}}]}
            ]
        },
        {"entry": [{"changes": [{"value": {"statuses": [{"id": {"a": 1}, "status": ["x"]}]}}]}]},
    ],
)
def test_odd_webhook_shapes_are_never_500(hooks: TestClient, payload: Any) -> None:  # noqa: F811
    r = _signed(hooks, json.dumps(payload).encode())
    assert r.status_code in (200, 400), r.text


def test_deeply_nested_import_json_is_400(client: TestClient, tenant: Tenant) -> None:
    r = client.post(
        "/v1/contacts/import",
        content="[" * 100_000,
        headers={**tenant.headers, "Content-Type": "application/json"},
    )
    assert_error(r, 400, "invalid_request")


# -- 4, 5, 6: contact fields --


def test_a_phone_with_a_trailing_newline_is_422(client: TestClient, tenant: Tenant) -> None:
    r = client.post("/v1/contacts", json={"name": "Dup", "phone": "+14155550000\n"}, headers=tenant.headers)
    assert_error(r, 422, "validation_error")
    r = client.post(
        "/v1/contacts",
        json={"name": "Mail", "phone": "+14155550099", "email": "a@example.com\n"},
        headers=tenant.headers,
    )
    assert_error(r, 422, "validation_error")


@pytest.mark.parametrize(
    "fields",
    [
        {"name": HUGE},
        {"phone": HUGE},
        {"email": HUGE + "@example.com"},
        {"telegram_chat_id": "9" * 65},
        {"telegram_chat_id": 10**70},
        {"telegram_chat_id": True},
        {"slack_user_id": "U" * 65},
        {"slack_user_id": {"x": 1}},
        {"attributes": {"k": "v" * 1001}},
        {"attributes": {"k" * 1001: "v"}},
        {"attributes": {f"k{i}": "v" for i in range(101)}},
        {"lists": [HUGE]},
        {"lists": ["lst_x"] * 1001},
    ],
)
def test_contact_fields_over_their_limits_are_refused(
    client: TestClient, tenant: Tenant, fields: dict[str, Any]
) -> None:
    data = {"name": "Ada", "phone": "+14155550123", **fields}
    r = client.post("/v1/contacts", json=data, headers=tenant.headers)
    assert r.status_code in (400, 422), r.text
    contact = client.get("/v1/contacts", headers=tenant.headers).json()["data"][0]
    patch = {k: v for k, v in fields.items() if k != "phone"} or {"phone": HUGE}
    r = client.patch(f"/v1/contacts/{contact['id']}", json=patch, headers=tenant.headers)
    assert r.status_code in (400, 422), r.text


def test_contact_fields_at_their_limits_are_accepted(client: TestClient, tenant: Tenant) -> None:
    data = {
        "name": "N" * 200,
        "phone": "+14155550123",
        "email": "a" * 64 + "@" + "b" * 63 + ".example.com",
        "telegram_chat_id": "9" * 64,
        "slack_user_id": "U" * 64,
        "attributes": {f"k{i}": "v" * 1000 for i in range(99)} | {"k" * 1000: "v"},
    }
    r = client.post("/v1/contacts", json=data, headers=tenant.headers)
    assert r.status_code == 201, r.text


# -- 5: every other stored string --


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/v1/contact-lists", {"name": HUGE}),
        ("/v1/sender-ids", {"value": HUGE, "channel": "slack"}),
        ("/v1/sender-ids", {"value": HUGE + "@example.com", "channel": "email"}),
    ],
)
def test_huge_strings_are_refused(
    client: TestClient, tenant: Tenant, path: str, payload: dict[str, Any]
) -> None:
    r = client.post(path, json=payload, headers=tenant.headers)
    assert r.status_code in (400, 422), r.text


SENDERS = {"sms": "MYBRAND", "email": "news@example.com", "slack": "Shop"}


@pytest.mark.parametrize(
    ("channel", "over"),
    [
        ("sms", {"name": HUGE}),
        ("sms", {"sender_id": HUGE}),
        ("sms", {"contact_list_id": HUGE}),
        ("sms", {"subject": HUGE}),
        ("sms", {"body": HUGE}),
        ("email", {"body": HUGE}),
        ("email", {"subject": "x" * 999}),
        ("slack", {"body": HUGE}),
    ],
)
def test_huge_campaign_fields_are_refused(
    client: TestClient, engine: Engine, channel: str, over: dict[str, Any]
) -> None:
    tenant = make_tenant(engine, channel=channel, sender=SENDERS[channel])
    r = client.post("/v1/campaigns", json=body(tenant, channel=channel, **over), headers=tenant.headers)
    assert r.status_code in (400, 422), r.text
    assert client.get("/v1/campaigns", headers=tenant.headers).json()["meta"]["total"] == 0


def test_huge_template_name_and_language_are_400(client: TestClient, wa_tenant: Tenant) -> None:
    for template in (_template(name=HUGE), _template(language=HUGE), _template(language={"code": HUGE})):
        r = client.post("/v1/campaigns", json=_wa_body(wa_tenant, template), headers=wa_tenant.headers)
        assert_error(r, 400, "invalid_request")


def test_huge_list_member_and_retry_codes_are_refused(client: TestClient, tenant: Tenant) -> None:
    r = client.post(
        f"/v1/contact-lists/{tenant.list_id}/contacts", json={"contact_ids": [HUGE]}, headers=tenant.headers
    )
    assert r.status_code in (400, 404), r.text
    cid = client.post("/v1/campaigns", json=body(tenant), headers=tenant.headers).json()["id"]
    r = client.post(f"/v1/campaigns/{cid}/retry", json={"error_codes": [HUGE]}, headers=tenant.headers)
    assert r.status_code == 400, r.text


# -- 10: an empty audience --


def test_a_campaign_with_no_recipient_is_422(client: TestClient, engine: Engine) -> None:
    tenant = make_tenant(engine, contacts_n=0)
    r = client.post("/v1/campaigns", json=body(tenant), headers=tenant.headers)
    assert_error(r, 422, "validation_error")
    # Members without an address for the channel count as no recipient either.
    slack = make_tenant(engine, contacts_n=0, channel="slack", sender="Shop", name="slack")
    r = client.post(
        "/v1/contacts",
        json={"name": "Ada", "phone": "+14155550123", "lists": [slack.list_id]},
        headers=slack.headers,
    )
    assert r.status_code == 201
    r = client.post("/v1/campaigns", json=body(slack, channel="slack"), headers=slack.headers)
    assert_error(r, 422, "validation_error")
    assert client.get("/v1/campaigns", headers=slack.headers).json()["meta"]["total"] == 0


# -- 11: the per-account cap on open campaigns --


def test_the_open_campaign_cap_is_429(settings: Settings, engine: Engine) -> None:
    capped = settings.model_copy(update={"api": settings.api.model_copy(update={"max_open_campaigns": 2})})
    tenant = make_tenant(engine, contacts_n=1)
    with TestClient(create_app(capped, launcher=RecordingLauncher(), engine=engine)) as client:
        for _ in range(2):
            assert client.post("/v1/campaigns", json=body(tenant), headers=tenant.headers).status_code == 201
        r = client.post("/v1/campaigns", json=body(tenant), headers=tenant.headers)
        assert_error(r, 429, "rate_limit_exceeded")
        assert r.headers["Retry-After"] == "60"
        assert "open campaigns" in r.json()["message"]


def test_patching_a_required_contact_field_to_null_is_400(client: TestClient, tenant: Tenant) -> None:
    contact = client.get("/v1/contacts", headers=tenant.headers).json()["data"][0]
    for field in ("name", "phone"):
        r = client.patch(f"/v1/contacts/{contact['id']}", json={field: None}, headers=tenant.headers)
        assert_error(r, 400, "invalid_request")
