"""Every real provider end to end: `campaigns serve` configured with Twilio, WhatsApp Cloud API,
Telegram, SMTP and Slack, each pointed at its fake on 127.0.0.1; one campaign per channel
completes with exactly one message per recipient at the fake and the right final counts,
including recipients that fail permanently (at send, or later by receipt)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployments.stack import free_port
from tests.e2e.serving import clean_env, cli_json, start_serve
from tests.providers import fake_server as fk

pytestmark = pytest.mark.e2e

SENDERS = {
    "sms": "SHOP",
    "whatsapp": "106540352242922",
    "telegram": "shop_bot",
    "email": "news@example.com",
    "slack": "Shop Bot",
}
NORMAL = [
    {
        "name": f"Person {i}",
        "phone": f"+1415555010{i}",
        "email": f"c{i}@example.com",
        "telegram_chat_id": f"100{i}",
        "slack_user_id": f"U00000{i}",
    }
    for i in range(4)
]
REJECTED = {
    "name": "Rejected Everywhere",
    "phone": "+15005550001",
    "email": "unknown@example.com",
    "telegram_chat_id": "40000",
    "slack_user_id": "U_NOTFOUND",
}
WA_UNDELIVERABLE = {
    "name": "Not On WhatsApp",
    "phone": "+15005550026",
    "email": "c5@example.com",
    "telegram_chat_id": "1005",
    "slack_user_id": "U000005",
}
SMS_UNREACHABLE = {
    "name": "Phone Off",
    "phone": "+15005550030",
    "email": "c6@example.com",
    "telegram_chat_id": "1006",
    "slack_user_id": "U000006",
}
CONTACTS = [*NORMAL, REJECTED, WA_UNDELIVERABLE, SMS_UNREACHABLE]
ADDRESS = {
    "sms": "phone",
    "whatsapp": "phone",
    "telegram": "telegram_chat_id",
    "email": "email",
    "slack": "slack_user_id",
}
EXPECTED = {  # (delivered, failed) of 7 recipients
    "sms": (5, 2),
    "whatsapp": (5, 2),
    "telegram": (6, 1),
    "email": (6, 1),
    "slack": (6, 1),
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data = tmp_path_factory.mktemp("providers")
    fakes = fk.FakeProviders(delivery_delay_s=0.3)
    with fk.ServerThread(fakes.app) as server, fk.SmtpServer() as smtp:
        port = free_port()
        api = f"http://127.0.0.1:{port}"
        fakes.whatsapp_webhook_url = api
        env = clean_env(
            **{
                "CAMPAIGNS_DATA_DIR": str(data),
                "CAMPAIGNS_PREFECT_PORT": str(free_port()),
                "CAMPAIGNS_PUBLIC_URL": api,
                "CAMPAIGNS_DELIVERY__POLL_INTERVAL_S": "0.5",
                "CAMPAIGNS_SMS__PROVIDER": "twilio",
                "CAMPAIGNS_TWILIO__ACCOUNT_SID": fk.TWILIO_SID,
                "CAMPAIGNS_TWILIO__AUTH_TOKEN": fk.TWILIO_TOKEN,
                "CAMPAIGNS_TWILIO__BASE_URL": f"{server.url}/twilio",
                "CAMPAIGNS_WHATSAPP__PROVIDER": "cloud_api",
                "CAMPAIGNS_WHATSAPP_CLOUD__ACCESS_TOKEN": fk.WHATSAPP_TOKEN,
                "CAMPAIGNS_WHATSAPP_CLOUD__APP_SECRET": fk.WHATSAPP_SECRET,
                "CAMPAIGNS_WHATSAPP_CLOUD__BASE_URL": f"{server.url}/whatsapp/v21.0",
                "CAMPAIGNS_TELEGRAM__PROVIDER": "bot_api",
                "CAMPAIGNS_TELEGRAM_BOT__TOKEN": fk.TELEGRAM_TOKEN,
                "CAMPAIGNS_TELEGRAM_BOT__BASE_URL": f"{server.url}/telegram",
                "CAMPAIGNS_EMAIL__PROVIDER": "smtp",
                "CAMPAIGNS_SMTP__HOST": "127.0.0.1",
                "CAMPAIGNS_SMTP__PORT": str(smtp.port),
                "CAMPAIGNS_SLACK__PROVIDER": "web_api",
                "CAMPAIGNS_SLACK_WEB__BOT_TOKEN": fk.SLACK_TOKEN,
                "CAMPAIGNS_SLACK_WEB__BASE_URL": f"{server.url}/slack/api",
            }
        )
        log = data / "serve.log"
        proc = start_serve(env, port, log)
        try:
            yield {"api": api, "env": env, "fakes": fakes, "smtp": smtp.handler, "log": log}
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


def test_every_provider_completes_a_campaign(stack: dict[str, Any], tmp_path: Path) -> None:
    account = cli_json(stack["env"], "accounts", "create", "providers", "--credits", "1000")
    for channel, value in SENDERS.items():
        cli_json(
            stack["env"],
            "sender-ids",
            "add",
            account["account_id"],
            "--channel",
            channel,
            "--value",
            value,
            "--approved",
        )
    headers = {"Authorization": f"Bearer {account['api_key']}"}
    with httpx.Client(base_url=stack["api"], headers=headers, timeout=30) as api:
        lst = api.post("/v1/contact-lists", json={"name": "everyone"}).json()["id"]
        for contact in CONTACTS:
            assert api.post("/v1/contacts", json={**contact, "lists": [lst]}).status_code == 201
        ids = {}
        for channel, sender in SENDERS.items():
            r = api.post(
                "/v1/campaigns",
                json={
                    "name": f"{channel} launch",
                    "channel": channel,
                    "contact_list_id": lst,
                    "sender_id": sender,
                    "body": "Hi {{first_name}}, our sale starts now!",
                },
            )
            assert r.status_code == 201, r.text
            ids[channel] = r.json()["id"]
        deadline = time.monotonic() + 180
        results: dict[str, dict[str, Any]] = {}
        while len(results) < len(ids) and time.monotonic() < deadline:
            for channel, cid in ids.items():
                c = api.get(f"/v1/campaigns/{cid}").json()
                if c["status"] in ("completed", "failed", "cancelled"):
                    results[channel] = c
            time.sleep(0.5)
        assert set(results) == set(ids), (results, stack["log"].read_text()[-3000:])
        for channel, c in results.items():
            assert c["status"] == "completed", (channel, c)
            assert (c["delivered_count"], c["failed_count"]) == EXPECTED[channel], (channel, c)
            assert c["total_recipients"] == 7
        # Exactly one message per accepted recipient at each fake; none for the rejected one.
        fakes: fk.FakeProviders = stack["fakes"]
        for channel in ("sms", "whatsapp", "telegram", "slack"):
            for contact in CONTACTS:
                to = contact[ADDRESS[channel]]
                assert fakes.count(channel, to) == (0 if contact is REJECTED else 1), (channel, to)
        for contact in CONTACTS:
            assert stack["smtp"].count(contact["email"]) == (0 if contact is REJECTED else 1)
        # The provider got exactly the personalized text.
        first_names = {c[ADDRESS[ch]]: c["name"].split()[0] for c in CONTACTS for ch in ADDRESS}
        for received in fakes.received:
            assert received.body == f"Hi {first_names[received.to]}, our sale starts now!", received
        # Error codes are the providers' own.
        codes = {}
        for channel, cid in ids.items():
            failed = api.get(f"/v1/campaigns/{cid}/messages?status=failed").json()["data"]
            undelivered = api.get(f"/v1/campaigns/{cid}/messages?status=undelivered").json()["data"]
            codes[channel] = sorted(m["error_code"] for m in failed + undelivered)
        assert codes == {
            "sms": ["21211", "30003"],
            "whatsapp": ["131009", "131026"],
            "telegram": ["chat_not_found"],
            "email": ["550"],
            "slack": ["channel_not_found"],
        }
        assert fakes.callbacks_sent > 0  # Twilio and WhatsApp statuses arrived by signed webhooks
        # Each real provider's campaign held its sender's slot while sending; all are free again.
        from sqlmodel import select

        from core.db import make_engine, session_scope
        from core.settings import Settings
        from models import SenderSlot

        engine = make_engine(
            Settings(data_dir=Path(stack["env"]["CAMPAIGNS_DATA_DIR"])).resolved_database_url()
        )
        with session_scope(engine) as session:
            assert session.execute(select(SenderSlot)).all() == []
        engine.dispose()
