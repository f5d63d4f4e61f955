"""SPEC §10 over HTTP: HTML email, one-click unsubscribe, send windows and contact time zones.

The HTML campaign goes through the real SMTP adapter to an aiosmtpd relay on 127.0.0.1, and
the link in its List-Unsubscribe header is then "clicked" against the API."""

from __future__ import annotations

import email
import email.policy
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from channels.email_smtp import SmtpChannel, SmtpSettings
from core.sender import send_chunk
from core.settings import Settings
from tests.api.test_campaigns import assert_error
from tests.factories import Tenant, make_tenant, start_campaign
from tests.providers.fake_server import SmtpServer

PUBLIC = "https://campaigns.example.com"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"public_url": PUBLIC})


@pytest.fixture
def mail(engine: Engine) -> Tenant:
    return make_tenant(engine, credits_amount=100, contacts_n=2, channel="email", sender="news@example.com")


def email_body(tenant: Tenant, **over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "Newsletter",
        "channel": "email",
        "contact_list_id": tenant.list_id,
        "sender_id": tenant.sender,
        "subject": "News for {{first_name}}",
        "body": "Hi {{name}}, read on. Leave: {{unsubscribe_url}}",
        "html": '<p>Hi <b>{{name}}</b> &amp; {{attributes.tag}}</p><a href="{{unsubscribe_url}}">Leave</a>',
    }
    data.update(over)
    return {k: v for k, v in data.items() if v is not None}


def _contact_ids(client: TestClient, tenant: Tenant) -> list[str]:
    page = client.get(f"/v1/contacts?list_id={tenant.list_id}", headers=tenant.headers).json()
    return sorted(c["id"] for c in page["data"])


# -- create / PATCH checks --


def test_html_is_for_email_only(client: TestClient, engine: Engine, mail: Tenant) -> None:
    r = client.post("/v1/campaigns", json=email_body(mail), headers=mail.headers)
    assert r.status_code == 201, r.text
    assert r.json()["html"].startswith("<p>Hi <b>{{name}}</b>")
    sms = make_tenant(engine, name="sms", phone_base=14155560000)
    bad = {"name": "x", "channel": "sms", "contact_list_id": sms.list_id, "sender_id": sms.sender}
    payload = assert_error(
        client.post("/v1/campaigns", json={**bad, "body": "hi", "html": "<p>hi</p>"}, headers=sms.headers),
        422,
        "validation_error",
    )
    assert payload["details"]["field"] == "html"
    assert client.get("/v1/credits", headers=sms.headers).json()["reserved"] == 0


def test_unsubscribe_url_is_an_email_placeholder_only(client: TestClient, engine: Engine) -> None:
    sms = make_tenant(engine, name="sms", phone_base=14155560000)
    body = {"name": "x", "channel": "sms", "contact_list_id": sms.list_id, "sender_id": sms.sender}
    r = client.post("/v1/campaigns", json={**body, "body": "Stop: {{unsubscribe_url}}"}, headers=sms.headers)
    assert_error(r, 422, "validation_error")
    assert "unsubscribe_url" in r.json()["message"]


@pytest.mark.parametrize(
    ("html", "status"),
    [("   ", 422), ("<p>{{nope}}</p>", 422), ("x" * 102_401, 422), ("é" * 60_000, 422), ("<p>ok</p>", 201)],
)
def test_html_limits(client: TestClient, mail: Tenant, html: str, status: int) -> None:
    r = client.post("/v1/campaigns", json=email_body(mail, html=html), headers=mail.headers)
    assert r.status_code == status, r.text


def test_html_can_be_patched_and_removed(client: TestClient, mail: Tenant) -> None:
    created = client.post(
        "/v1/campaigns", json=email_body(mail, scheduled_at="2099-01-01T00:00:00Z"), headers=mail.headers
    ).json()
    r = client.patch(f"/v1/campaigns/{created['id']}", json={"html": "<h1>New</h1>"}, headers=mail.headers)
    assert r.status_code == 200, r.text and r.json()["html"] == "<h1>New</h1>"
    r = client.patch(f"/v1/campaigns/{created['id']}", json={"html": None}, headers=mail.headers)
    assert r.status_code == 200 and r.json()["html"] is None


@pytest.mark.parametrize(
    ("window", "status", "code"),
    [
        ({"start": "09:00", "end": "20:00"}, 201, None),
        ({"start": "00:00", "end": "24:00"}, 201, None),
        ({"start": "20:00", "end": "09:00"}, 422, "validation_error"),
        ({"start": "09:00", "end": "09:00"}, 422, "validation_error"),
        ({"start": "9am", "end": "20:00"}, 400, "invalid_request"),
        ({"start": "25:00", "end": "26:00"}, 400, "invalid_request"),
        ({"start": "09:00"}, 400, "invalid_request"),
        ("09:00-20:00", 400, "invalid_request"),
    ],
)
def test_send_window_checks(
    client: TestClient, mail: Tenant, window: Any, status: int, code: str | None
) -> None:
    r = client.post("/v1/campaigns", json=email_body(mail, send_window=window), headers=mail.headers)
    if code:
        assert_error(r, status, code)
    else:
        assert r.status_code == status, r.text
        assert r.json()["send_window"] == window


def test_contact_timezone_is_checked_and_shown(client: TestClient, mail: Tenant) -> None:
    base = {"name": "Zoe", "phone": "+33612345678", "email": "zoe@example.com"}
    payload = assert_error(
        client.post("/v1/contacts", json={**base, "timezone": "Mars/Olympus"}, headers=mail.headers),
        422,
        "validation_error",
    )
    assert payload["details"]["field"] == "timezone"
    created = client.post("/v1/contacts", json=base, headers=mail.headers).json()
    assert created["timezone"] is None and created["opted_out_channels"] == []
    r = client.patch(f"/v1/contacts/{created['id']}", json={"timezone": "Asia/Tokyo"}, headers=mail.headers)
    assert r.status_code == 200 and r.json()["timezone"] == "Asia/Tokyo"
    assert_error(
        client.patch(f"/v1/contacts/{created['id']}", json={"timezone": "Nowhere"}, headers=mail.headers),
        422,
        "validation_error",
    )
    assert (
        client.get(f"/v1/contacts/{created['id']}", headers=mail.headers).json()["timezone"] == "Asia/Tokyo"
    )


def test_import_takes_a_timezone_column(client: TestClient, mail: Tenant) -> None:
    csv = (
        "name,phone,timezone\n"
        "Ada,+447700900001,Europe/London\nBob,+447700900002,Moon/Base\nCy,+447700900003,\n"
    )
    r = client.post(
        f"/v1/contacts/import?list_id={mail.list_id}",
        content=csv,
        headers={**mail.headers, "Content-Type": "text/csv"},
    )
    result = r.json()
    assert (result["created"], result["rejected"]) == (2, 1), result
    assert "timezone" in result["rejected_rows"][0]["reason"]
    zones = {
        c["name"]: c["timezone"]
        for c in client.get("/v1/contacts?per_page=100", headers=mail.headers).json()["data"]
    }
    assert zones["Ada"] == "Europe/London" and zones["Cy"] is None


# -- the whole path: HTML email over SMTP, then a click on its link --


def _sent_emails(smtp: SmtpServer) -> list[email.message.EmailMessage]:
    return [
        email.message_from_bytes(content, policy=email.policy.default)  # type: ignore[misc]
        for _f, _to, content in smtp.handler.messages
    ]


async def _send(settings: Settings, engine: Engine, campaign_id: str, port: int) -> None:
    start_campaign(engine, campaign_id)
    channel = SmtpChannel(SmtpSettings(host="127.0.0.1", port=port))
    await send_chunk(
        settings=settings, engine=engine, campaign_id=campaign_id, start=0, end=100, channel=channel
    )


async def test_an_html_email_is_multipart_with_one_click_unsubscribe(
    client: TestClient, settings: Settings, engine: Engine, mail: Tenant
) -> None:
    client.patch(
        f"/v1/contacts/{_contact_ids(client, mail)[0]}",
        json={"name": "Ada <Lovelace>", "attributes": {"tag": "R&D"}},
        headers=mail.headers,
    )
    created = client.post("/v1/campaigns", json=email_body(mail), headers=mail.headers).json()
    with SmtpServer() as smtp:
        await _send(settings, engine, created["id"], smtp.port)
    sent = _sent_emails(smtp)
    assert len(sent) == 2
    ada = next(m for m in sent if "Ada" in str(m["Subject"]))
    assert ada.get_content_type() == "multipart/alternative"
    text, html = (part for part in ada.iter_parts())
    assert text.get_content_type() == "text/plain" and html.get_content_type() == "text/html"
    header = str(ada["List-Unsubscribe"])
    assert str(ada["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
    match = re.fullmatch(r"<(https://campaigns\.example\.com(/v1/unsubscribe/[A-Za-z0-9_.-]+))>", header)
    assert match, header
    url, path = match.groups()
    # On the wire the header is the URL itself, on one line: no RFC 2047 encoded-word, which
    # RFC 2369/8058 do not allow there (the 78-column folding of aiosmtplib produced one).
    raw = next(c for _f, _to, c in smtp.handler.messages if b"News for Ada" in c)
    assert f"\r\nList-Unsubscribe: <{url}>\r\n".encode() in raw
    assert b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in raw
    assert email.message_from_bytes(raw)["List-Unsubscribe"] == f"<{url}>"  # compat32 parser
    assert text.get_content().startswith(f"Hi Ada <Lovelace>, read on. Leave: {url}")
    assert "<b>Ada &lt;Lovelace&gt;</b> &amp; R&amp;D" in html.get_content()  # escaped in HTML only
    assert f'href="{url}"' in html.get_content()
    assert str(ada["Subject"]) == "News for Ada"

    # Link scanners open links: a GET shows the page and changes nothing.
    page = client.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<form method="post"' in page.text and "<button" in page.text and "<script" not in page.text
    ada_id = _contact_ids(client, mail)
    contacts = {c["id"]: c for c in client.get("/v1/contacts", headers=mail.headers).json()["data"]}
    assert all(c["opted_out_channels"] == [] for c in contacts.values())

    # The mail client's one-click POST (RFC 8058 body), and again: both 200.
    for _ in range(2):
        r = client.post(
            path,
            content="List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 200, r.text
        assert r.json() == {"unsubscribed": True, "channel": "email"}
    contacts = {c["name"]: c for c in client.get("/v1/contacts", headers=mail.headers).json()["data"]}
    assert contacts["Ada <Lovelace>"]["opted_out_channels"] == ["email"]
    assert contacts["Ada <Lovelace>"]["subscribed"] is True  # still reachable on other channels
    assert [c["opted_out_channels"] for n, c in contacts.items() if n != "Ada <Lovelace>"] == [[]]
    assert len(ada_id) == 2

    # The next email campaign to the list skips her.
    again = client.post("/v1/campaigns", json=email_body(mail, name="Next"), headers=mail.headers).json()
    assert (again["total_recipients"], again["skipped_count"]) == (1, 1)


async def test_a_text_email_gets_a_footer_with_its_link(
    client: TestClient, settings: Settings, engine: Engine, mail: Tenant
) -> None:
    created = client.post(
        "/v1/campaigns",
        json=email_body(mail, body="Plain news", html=None, subject="News"),
        headers=mail.headers,
    ).json()
    with SmtpServer() as smtp:
        await _send(settings, engine, created["id"], smtp.port)
    first = _sent_emails(smtp)[0]
    assert first.get_content_type() == "text/plain"
    url = str(first["List-Unsubscribe"]).strip("<>")
    content = first.get_content().replace("\r\n", "\n")
    assert content.startswith("Plain news\n") and url in content


def test_a_bad_token_is_404_and_changes_nothing(client: TestClient, mail: Tenant) -> None:
    for token in ("nope", "a" * 40 + "." + "b" * 22, "x" * 500):
        assert_error(client.post(f"/v1/unsubscribe/{token}"), 404, "not_found")
        assert_error(client.get(f"/v1/unsubscribe/{token}"), 404, "not_found")


def test_the_html_confirmation_after_a_browser_post(
    client: TestClient, settings: Settings, engine: Engine, mail: Tenant
) -> None:
    from core import unsubscribe
    from core.db import session_scope

    contact_id = _contact_ids(client, mail)[0]
    with session_scope(engine) as session:
        token = unsubscribe.signer(session, settings).token(mail.account_id, contact_id)
    r = client.post(f"/v1/unsubscribe/{token}", headers={"Accept": "text/html,*/*"})
    assert (
        r.status_code == 200
        and "unsubscribed" in r.text
        and r.headers["content-type"].startswith("text/html")
    )
    assert client.get(f"/v1/contacts/{contact_id}", headers=mail.headers).json()["opted_out_channels"] == [
        "email"
    ]
    # Another account's contact id under this account's name is refused.
    other = make_tenant(engine, name="other", phone_base=14155570000, channel="email", sender="o@example.com")
    with session_scope(engine) as session:
        forged = unsubscribe.signer(session, settings).token(other.account_id, contact_id)
    assert_error(client.post(f"/v1/unsubscribe/{forged}"), 404, "not_found")
    # A deleted contact's link is a 404 too.
    client.delete(f"/v1/contacts/{contact_id}", headers=mail.headers)
    assert_error(client.post(f"/v1/unsubscribe/{token}"), 404, "not_found")


def test_an_unpaired_surrogate_is_a_400_not_a_500(client: TestClient, mail: Tenant) -> None:
    import json

    for field in ("html", "body", "subject"):
        raw = json.dumps(email_body(mail, **{field: "<p>\ud800</p>"}))  # an escaped lone surrogate
        r = client.post(
            "/v1/campaigns", content=raw, headers={**mail.headers, "Content-Type": "application/json"}
        )
        assert_error(r, 400, "invalid_request")
