"""SendGrid end to end: `campaigns serve` with CAMPAIGNS_EMAIL__PROVIDER=sendgrid against the fake
on 127.0.0.1, whose signed Event Webhook batches (POSTed to CAMPAIGNS_PUBLIC_URL) bring every
message to its final status: the campaign completes, a bounced recipient ends `undelivered` /
`bounce` and leaves email, and the next campaign to the same list skips it."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from deployments.stack import free_port
from tests.e2e.serving import clean_env, cli_json, start_serve, wait_for
from tests.providers import fake_server as fk

pytestmark = pytest.mark.e2e

SENDER = "news@example.com"
CONTACTS = [
    {"name": "Ada Lovelace", "phone": "+14155550101", "email": "ada@example.com"},
    {"name": "Bob Byte", "phone": "+14155550102", "email": "bob@example.com"},
    {"name": "Gone Away", "phone": "+14155550103", "email": "bounce-gone@example.com"},
    {"name": "Angry Reader", "phone": "+14155550104", "email": "spam-angry@example.com"},
]
BOUNCED, COMPLAINED = "bounce-gone@example.com", "spam-angry@example.com"
FINAL = ("completed", "failed", "cancelled")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data = tmp_path_factory.mktemp("sendgrid")
    fakes = fk.FakeProviders(delivery_delay_s=0.3)
    with fk.ServerThread(fakes.app) as server:
        port = free_port()
        api = f"http://127.0.0.1:{port}"
        fakes.sendgrid_webhook_url = api
        env = clean_env(
            **{
                "CAMPAIGNS_DATA_DIR": str(data),
                "CAMPAIGNS_PREFECT_PORT": str(free_port()),
                "CAMPAIGNS_PUBLIC_URL": api,
                "CAMPAIGNS_DELIVERY__POLL_INTERVAL_S": "0.5",
                "CAMPAIGNS_EMAIL__PROVIDER": "sendgrid",
                "CAMPAIGNS_SENDGRID__API_KEY": fk.SENDGRID_KEY,
                "CAMPAIGNS_SENDGRID__BASE_URL": f"{server.url}/sendgrid",
                "CAMPAIGNS_SENDGRID__WEBHOOK_PUBLIC_KEY": fk.SENDGRID_PUBLIC_KEY,
            }
        )
        log = data / "serve.log"
        proc = start_serve(env, port, log)
        try:
            yield {"api": api, "env": env, "fakes": fakes, "log": log}
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


def _run(api: httpx.Client, stack: dict[str, Any], list_id: str, name: str) -> dict[str, Any]:
    r = api.post(
        "/v1/campaigns",
        json={
            "name": name,
            "channel": "email",
            "contact_list_id": list_id,
            "sender_id": SENDER,
            "subject": "Spring sale, {{first_name}}",
            "body": "Hi {{first_name}}, our sale starts now!",
            "html": "<p>Hi <b>{{first_name}}</b>, our sale starts now!</p>",
        },
    )
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    return wait_for(  # type: ignore[no-any-return]
        lambda: api.get(f"/v1/campaigns/{cid}").json(),
        lambda c: c["status"] in FINAL,
        120,
        f"{name} ({stack['log'].read_text()[-3000:]})",
        every=0.5,
    )


def test_sendgrid_events_complete_the_campaign_and_bounces_leave_email(stack: dict[str, Any]) -> None:
    account = cli_json(stack["env"], "accounts", "create", "sendgrid", "--credits", "100")
    cli_json(
        stack["env"],
        "sender-ids",
        "add",
        account["account_id"],
        "--channel",
        "email",
        "--value",
        SENDER,
        "--approved",
    )
    fakes: fk.FakeProviders = stack["fakes"]
    headers = {"Authorization": f"Bearer {account['api_key']}"}
    with httpx.Client(base_url=stack["api"], headers=headers, timeout=30) as api:
        list_id = api.post("/v1/contact-lists", json={"name": "newsletter"}).json()["id"]
        contact_ids = {}
        for contact in CONTACTS:
            r = api.post("/v1/contacts", json={**contact, "lists": [list_id]})
            assert r.status_code == 201, r.text
            contact_ids[contact["email"]] = r.json()["id"]

        first = _run(api, stack, list_id, "spring")
        assert first["status"] == "completed", first
        assert (first["total_recipients"], first["delivered_count"], first["failed_count"]) == (4, 3, 1)
        messages = {m["to"]: m for m in api.get(f"/v1/campaigns/{first['id']}/messages").json()["data"]}
        assert (messages[BOUNCED]["status"], messages[BOUNCED]["error_code"]) == ("undelivered", "bounce")
        assert {m["status"] for to, m in messages.items() if to != BOUNCED} == {"delivered"}
        # One request per recipient, each the X-Message-Id stored for its message, carrying its ids.
        for to, m in messages.items():
            assert fakes.count("sendgrid", to) == 1, to
            sent = fakes.sendgrid_messages[m["provider_message_id"]]["data"]
            (personalization,) = sent["personalizations"]
            assert personalization["to"] == [{"email": to}]
            assert personalization["custom_args"]["campaigns_message_id"] == m["id"]
            first_name = next(c["name"] for c in CONTACTS if c["email"] == to).split()[0]
            assert sent["subject"] == f"Spring sale, {first_name}"
            assert [p["type"] for p in sent["content"]] == ["text/plain", "text/html"]
            assert sent["content"][1]["value"].startswith(f"<p>Hi <b>{first_name}</b>")
            assert sent["headers"]["List-Unsubscribe"].startswith(f"<{stack['api']}/v1/unsubscribe/")
            assert sent["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert fakes.sendgrid_webhook_answers and set(fakes.sendgrid_webhook_answers) == {200}

        # The bounce and the spam report took those two out of email, and only out of email.
        for to, channels in ((BOUNCED, ["email"]), (COMPLAINED, ["email"]), ("ada@example.com", [])):
            contact = api.get(f"/v1/contacts/{contact_ids[to]}").json()
            assert (contact["opted_out_channels"], contact["unsubscribed_at"]) == (channels, None), contact

        sent_before = len(fakes.sendgrid_messages)
        started = time.monotonic()
        second = _run(api, stack, list_id, "summer")
        assert second["status"] == "completed", second
        assert (second["total_recipients"], second["skipped_count"], second["delivered_count"]) == (2, 2, 2)
        assert len(fakes.sendgrid_messages) == sent_before + 2
        assert fakes.count("sendgrid", BOUNCED) == fakes.count("sendgrid", COMPLAINED) == 1
        assert time.monotonic() - started < 60
