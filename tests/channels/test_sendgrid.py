"""The SendGrid adapter with httpx.MockTransport (exact request, error classification) and the
Signed Event Webhook check against the sendgrid-python SDK's own test vector."""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from datetime import UTC, datetime

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import SecretStr

from channels.base import (
    Channel,
    OutboundMessage,
    PermanentSendError,
    ProviderConfigError,
    TransientSendError,
    UnknownOutcomeError,
)
from channels.email_sendgrid import (
    SendGridChannel,
    provider_id,
    timestamp_is_fresh,
    verify_signature,
)
from core.channels import build_channel
from core.settings import SendGridSettings, Settings

MSG = OutboundMessage(
    message_id="msg_1",
    campaign_id="cmp_1",
    to="ada@example.org",
    sender="news@shop.example",
    body="Hi Ada ✓",
    subject="Spring sale",
)
FULL = OutboundMessage(
    message_id="msg_2",
    campaign_id="cmp_1",
    to="ada@example.org",
    sender="Shop <news@shop.example>",
    body="Hi Ada ✓",
    subject="Spring\r\nsale",
    html="<p>Hi <b>Ada</b> ✓</p>",
    unsubscribe_url="https://campaigns.example.com/v1/unsubscribe/tok123",
)

# sendgrid-python test/unit/test_eventwebhook.py (research/providers.md §4.3).
SDK_KEY = (
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe62gw+"
    "2fNNRaINXvVpiglSI8eNEc6wEA3F+g=="
)
SDK_OTHER_KEY = (
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqTxd43gyp8IOEto2LdIfjRQrIbsd4SXZkLW6jDutdhXSJCWHw8REntlo"
    "7aNDthvj+y7GjUuFDb/R1NGe1OPzpA=="
)
SDK_TIMESTAMP = "1600112502"
SDK_SIGNATURE = (
    "MEUCIGHQVtGj+Y3LkG9fLcxf3qfI10QysgDWmMOVmxG0u6ZUAiEAyBiXDWzM+uOe5W0JuG+luQAbPIqHh89M15TluLtEZtM="
)
SDK_OTHER_SIGNATURE = (
    "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH3j/0="
)
SDK_PAYLOAD = (
    json.dumps(
        [
            {
                "email": "hello@world.com",
                "event": "dropped",
                "reason": "Bounced Address",
                "sg_event_id": "ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA",
                "sg_message_id": "LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0",
                "smtp-id": "<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>",
                "timestamp": 1600112492,
            }
        ],
        sort_keys=True,
        separators=(",", ":"),
    )
    + "\r\n"
).encode()


def mock(handler):  # type: ignore[no-untyped-def]
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    return httpx.MockTransport(record), seen


def sendgrid(transport: httpx.MockTransport) -> SendGridChannel:
    settings = SendGridSettings(api_key=SecretStr("SG.key"), base_url="https://api.sendgrid.test/")
    return SendGridChannel(settings, transport=transport)


async def send(handler, message: OutboundMessage = MSG):  # type: ignore[no-untyped-def]
    transport, seen = mock(handler)
    chan = sendgrid(transport)
    await chan.open()
    try:
        return await chan.send(message), seen
    finally:
        await chan.close()


async def test_one_request_per_message_with_both_parts_and_one_click_unsubscribe() -> None:
    result, seen = await send(
        lambda r: httpx.Response(202, headers={"X-Message-Id": "LRzXl_NHStOGhQ4kofSm_A"}), FULL
    )
    assert (result.provider_message_id, result.status) == ("LRzXl_NHStOGhQ4kofSm_A", "sent")
    (request,) = seen
    assert (request.method, str(request.url)) == ("POST", "https://api.sendgrid.test/v3/mail/send")
    assert request.headers["authorization"] == "Bearer SG.key"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {
        "personalizations": [
            {
                "to": [{"email": "ada@example.org"}],
                "custom_args": {"campaigns_message_id": "msg_2", "campaigns_campaign_id": "cmp_1"},
            }
        ],
        "from": {"email": "news@shop.example", "name": "Shop"},
        "subject": "Spring sale",  # a personalized subject never breaks into headers
        "content": [
            {"type": "text/plain", "value": "Hi Ada ✓"},
            {"type": "text/html", "value": "<p>Hi <b>Ada</b> ✓</p>"},
        ],
        "headers": {
            "List-Unsubscribe": "<https://campaigns.example.com/v1/unsubscribe/tok123>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    }


async def test_a_text_only_message_has_one_part_and_no_unsubscribe_headers() -> None:
    _result, seen = await send(lambda r: httpx.Response(202, headers={"X-Message-Id": "X1"}))
    body = json.loads(seen[0].content)
    assert body["content"] == [{"type": "text/plain", "value": "Hi Ada ✓"}]
    assert body["from"] == {"email": "news@shop.example"}
    assert "headers" not in body


async def test_an_html_only_message_sends_no_empty_text_part() -> None:
    html_only = dataclasses.replace(FULL, body=None)
    _result, seen = await send(lambda r: httpx.Response(202, headers={"X-Message-Id": "X1"}), html_only)
    assert [part["type"] for part in json.loads(seen[0].content)["content"]] == ["text/html"]


async def test_an_acceptance_without_x_message_id_is_still_accepted() -> None:
    # Never resent (that could deliver twice): its events find it by the custom arg.
    result, _seen = await send(lambda r: httpx.Response(202))
    assert (result.provider_message_id, result.status) == ("msg_1", "sent")


def _errors(message: str, field: str | None = None) -> dict[str, object]:
    return {"errors": [{"message": message, "field": field, "help": None}]}


@pytest.mark.parametrize(
    ("status", "body", "text"),
    [
        (
            400,
            _errors("Does not contain a valid address.", "personalizations.0.to.0.email"),
            "Does not contain a valid address. (personalizations.0.to.0.email)",
        ),
        (413, None, "HTTP 413"),  # a body SendGrid refuses by size, maybe from a proxy: no JSON
    ],
)
async def test_bad_content_is_permanent(status: int, body: dict[str, object] | None, text: str) -> None:
    with pytest.raises(PermanentSendError) as info:
        await send(
            lambda r: httpx.Response(status, json=body) if body else httpx.Response(status, text="too big")
        )
    assert (info.value.code, info.value.message, info.value.opt_out) == (str(status), text, False)


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_account_errors_stop_the_campaign(status: int) -> None:
    body = _errors("The from address does not match a verified Sender Identity.", "from")
    with pytest.raises(ProviderConfigError, match=f"HTTP {status}"):
        await send(lambda r: httpx.Response(status, json=body))


async def test_429_waits_for_retry_after_or_the_rate_limit_reset() -> None:
    with pytest.raises(TransientSendError) as info:
        await send(
            lambda r: httpx.Response(429, json=_errors("too many requests"), headers={"Retry-After": "7"})
        )
    assert (info.value.code, info.value.retry_after) == ("429", 7.0)
    reset = str(int(time.time()) + 30)
    with pytest.raises(TransientSendError) as info:
        await send(
            lambda r: httpx.Response(429, headers={"X-RateLimit-Reset": reset, "X-RateLimit-Remaining": "0"})
        )
    assert info.value.retry_after == pytest.approx(30, abs=1.5)
    with pytest.raises(TransientSendError) as info:
        await send(lambda r: httpx.Response(429, headers={"X-RateLimit-Reset": "soon"}))
    assert info.value.retry_after is None


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_are_transient(status: int) -> None:
    with pytest.raises(TransientSendError) as info:
        await send(lambda r: httpx.Response(status, text="oops"))
    assert info.value.code == str(status)


async def test_connection_errors_are_transient_and_a_lost_answer_is_an_unknown_outcome() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    def lose(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("no answer", request=request)

    with pytest.raises(TransientSendError) as info:
        await send(refuse)
    assert info.value.code == "connection_error"
    with pytest.raises(UnknownOutcomeError):
        await send(lose)


async def test_no_lookup_and_no_key_is_a_config_error() -> None:
    chan = sendgrid(httpx.MockTransport(lambda r: httpx.Response(500)))
    assert isinstance(chan, Channel)
    assert (chan.name, chan.supports_status_lookup, chan.sent_lookup_delay_s) == ("email", False, None)
    assert await chan.fetch_status("X1", None) is None
    assert await chan.find_sent(MSG, datetime.now(UTC)) == []
    with pytest.raises(ProviderConfigError, match="CAMPAIGNS_SENDGRID__API_KEY"):
        SendGridChannel(SendGridSettings())


def test_settings_and_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "CAMPAIGNS_EMAIL__PROVIDER": "sendgrid",
        "CAMPAIGNS_SENDGRID__API_KEY": "SG.env",
        "CAMPAIGNS_SENDGRID__WEBHOOK_PUBLIC_KEY": SDK_KEY,
    }.items():
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.sendgrid.base_url == "https://api.sendgrid.com"
    assert settings.sendgrid.webhook_public_key == SDK_KEY
    chan = build_channel("email", settings)
    assert isinstance(chan, SendGridChannel)
    assert chan.headers["authorization"] == "Bearer SG.env"


# -- Signed Event Webhook --


def test_the_sdk_vector_verifies() -> None:
    assert verify_signature(SDK_KEY, SDK_PAYLOAD, SDK_SIGNATURE, SDK_TIMESTAMP)


@pytest.mark.parametrize(
    ("key", "payload", "signature", "timestamp"),
    [
        (SDK_OTHER_KEY, SDK_PAYLOAD, SDK_SIGNATURE, SDK_TIMESTAMP),  # another account's key
        (SDK_KEY, b"payload", SDK_SIGNATURE, SDK_TIMESTAMP),
        (SDK_KEY, SDK_PAYLOAD.rstrip(), SDK_SIGNATURE, SDK_TIMESTAMP),  # the raw body, exactly
        (SDK_KEY, SDK_PAYLOAD, SDK_OTHER_SIGNATURE, SDK_TIMESTAMP),
        (SDK_KEY, SDK_PAYLOAD, SDK_SIGNATURE, "timestamp"),
        (SDK_KEY, SDK_PAYLOAD, SDK_SIGNATURE, "1600112503"),
        (SDK_KEY, SDK_PAYLOAD, None, SDK_TIMESTAMP),
        (SDK_KEY, SDK_PAYLOAD, SDK_SIGNATURE, None),
        (SDK_KEY, SDK_PAYLOAD, "not base64!", SDK_TIMESTAMP),
        (SDK_KEY, SDK_PAYLOAD, base64.b64encode(b"\x30\x02junk").decode(), SDK_TIMESTAMP),
        ("", SDK_PAYLOAD, SDK_SIGNATURE, SDK_TIMESTAMP),
        ("not a key", SDK_PAYLOAD, SDK_SIGNATURE, SDK_TIMESTAMP),
    ],
)
def test_anything_else_does_not(
    key: str, payload: bytes, signature: str | None, timestamp: str | None
) -> None:
    assert not verify_signature(key, payload, signature, timestamp)


def test_a_pem_key_works_and_other_curves_do_not() -> None:
    pem = f"-----BEGIN PUBLIC KEY-----\n{SDK_KEY}\n-----END PUBLIC KEY-----\n"
    assert verify_signature(pem, SDK_PAYLOAD, SDK_SIGNATURE, SDK_TIMESTAMP)
    p384 = ec.generate_private_key(ec.SECP384R1())
    der = p384.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signature = base64.b64encode(p384.sign(SDK_TIMESTAMP.encode() + SDK_PAYLOAD, ec.ECDSA(hashes.SHA256())))
    assert not verify_signature(
        base64.b64encode(der).decode(), SDK_PAYLOAD, signature.decode(), SDK_TIMESTAMP
    )


def test_freshness_is_checked_against_the_given_clock() -> None:
    now = 1_600_112_502.0
    assert timestamp_is_fresh("1600112502", now=now, max_skew_s=600)
    assert timestamp_is_fresh("1600111902", now=now, max_skew_s=600)
    assert not timestamp_is_fresh("1600111901", now=now, max_skew_s=600)  # 10 min + 1 s old
    assert not timestamp_is_fresh("1600113103", now=now, max_skew_s=600)  # from the future
    for bad in (None, "", "soon", "-1", "1" * 40):
        assert not timestamp_is_fresh(bad, now=now, max_skew_s=600)


def test_the_provider_id_is_the_x_message_id_of_the_send() -> None:
    sg = "LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0"
    assert provider_id(sg) == "LRzXl_NHStOGhQ4kofSm_A"
    assert provider_id("LRzXl_NHStOGhQ4kofSm_A") == "LRzXl_NHStOGhQ4kofSm_A"
    assert provider_id(".x") is None and provider_id(None) is None and provider_id(42) is None
