"""Regression tests for adapter hardening (issue 9): no credential in any error text, a capped
Retry-After, and malformed provider answers classified instead of crashing."""

from __future__ import annotations

import asyncio
import contextlib
import traceback
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import pytest
from pydantic import SecretStr

from channels.base import MAX_RETRY_AFTER_S, OutboundMessage, SendError, TransientSendError
from channels.http import AiohttpTransport
from channels.slack_web import SlackChannel
from channels.sms_twilio import TwilioChannel
from channels.telegram_bot import TelegramChannel
from channels.whatsapp_cloud import WhatsAppCloudChannel
from core.delivery import RetryPolicy, outcome_of
from core.pacing import Pacer
from core.settings import SlackWebSettings, TelegramBotSettings, TwilioSettings, WhatsAppCloudSettings

TOKEN = "123456789:AAE-SecretBotToken_xyz"
MSG = OutboundMessage("msg_1", "cmp_1", "1234", "shop_bot", body="hi")


def _chain_text(exc: BaseException) -> str:
    """Everything a log line or a stored message could show of the exception."""
    return "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)


@contextlib.asynccontextmanager
async def garbage_server() -> AsyncIterator[str]:
    """A loopback server (on the test's own loop) that answers with a malformed HTTP response."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: banana\r\n\r\n{}")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.close()
    await server.wait_closed()


async def test_a_malformed_telegram_answer_never_shows_the_bot_token() -> None:
    async with garbage_server() as url:
        await _send_to_garbage(url)


async def _send_to_garbage(url: str) -> None:
    chan = TelegramChannel(TelegramBotSettings(token=SecretStr(TOKEN), base_url=url), timeout=2.0)
    await chan.open()
    try:
        with pytest.raises(SendError) as info:
            await chan.send(MSG)
        assert TOKEN not in _chain_text(info.value)
        assert "AAE-SecretBotToken" not in _chain_text(info.value)
        outcome = await outcome_of(
            chan,
            Pacer(None, 1),
            MSG,
            "cnt_1",
            RetryPolicy(window_s=0.2, max_backoff_s=0.05),
            may_send=lambda: True,
            on_request=lambda: None,
        )
        assert outcome.error_message and "AAE-SecretBotToken" not in outcome.error_message
    finally:
        await chan.close()


class _FailingSession:
    """Stands in for aiohttp.ClientSession: every request raises `error(url)`."""

    def __init__(self, error: Any) -> None:
        self.error = error

    def request(self, method: str, url: Any, **kwargs: Any) -> Any:
        raise self.error(url)

    async def close(self) -> None:
        return None


class _Transport(AiohttpTransport):
    def __init__(self, error: Any) -> None:
        super().__init__()
        self._fake = _FailingSession(error)

    def _client(self) -> Any:
        return self._fake


def _response_error(url: Any) -> aiohttp.ClientResponseError:
    info = aiohttp.RequestInfo(url, "POST", {}, url)  # type: ignore[arg-type]
    return aiohttp.ClientResponseError(info, (), status=400, message="Invalid header value char")


@pytest.mark.parametrize(
    "error",
    [
        lambda url: aiohttp.ConnectionTimeoutError(f"Connection timeout to host {url}"),
        lambda url: aiohttp.ServerTimeoutError(f"Timeout on reading data from {url}"),
        _response_error,
        lambda url: aiohttp.InvalidURL(url),
        lambda url: aiohttp.ClientConnectorError(
            aiohttp.client_reqrep.ConnectionKey(str(url), 443, True, None, None, None, None),  # type: ignore[arg-type]
            OSError(111, f"refused {url}"),
        ),
        lambda url: TimeoutError(f"timeout {url}"),
        lambda url: aiohttp.ClientPayloadError(f"bad payload from {url}"),
    ],
)
async def test_transport_errors_never_carry_the_url_path(error: Any) -> None:
    chan = TelegramChannel(
        TelegramBotSettings(token=SecretStr(TOKEN), base_url="https://api.telegram.test"),
        transport=_Transport(error),
    )
    await chan.open()
    with pytest.raises(SendError) as info:
        await chan.send(MSG)
    assert "AAE-SecretBotToken" not in _chain_text(info.value)
    assert "api.telegram.test" in info.value.message or info.value.code == "outcome_unknown"


async def test_mock_transport_errors_are_redacted_too() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot reach {request.url}")

    chan = TelegramChannel(
        TelegramBotSettings(token=SecretStr(TOKEN), base_url="https://api.telegram.test"),
        transport=httpx.MockTransport(handler),
    )
    await chan.open()
    with pytest.raises(TransientSendError) as info:
        await chan.send(MSG)
    assert "AAE-SecretBotToken" not in _chain_text(info.value)


# -- Retry-After is capped --


def _mock(status: int, headers: dict[str, str] | None = None, json: Any = None) -> httpx.MockTransport:
    return httpx.MockTransport(lambda r: httpx.Response(status, headers=headers, json=json))


@pytest.mark.parametrize("value", ["86400", "1e9", "inf", "Wed, 21 Oct 2099 07:28:00 GMT"])
async def test_a_huge_retry_after_is_capped(value: str) -> None:
    twilio = TwilioChannel(
        TwilioSettings(account_sid="AC1", auth_token=SecretStr("t"), base_url="https://api.twilio.test"),
        transport=_mock(429, {"Retry-After": value}, {"code": 20429, "message": "Too Many Requests"}),
    )
    slack = SlackChannel(
        SlackWebSettings(bot_token=SecretStr("xoxb-1"), base_url="https://slack.test/api"),
        transport=_mock(429, {"Retry-After": value}),
    )
    whatsapp = WhatsAppCloudChannel(
        WhatsAppCloudSettings(access_token=SecretStr("t"), base_url="https://graph.test"),
        transport=_mock(429, {"Retry-After": value}, {"error": {"code": 130429, "message": "slow"}}),
    )
    for chan in (twilio, slack, whatsapp):
        await chan.open()
        with pytest.raises(TransientSendError) as info:
            await chan.send(OutboundMessage("msg_1", "cmp_1", "+14155550100", "1065", body="hi"))
        assert info.value.retry_after == MAX_RETRY_AFTER_S
        await chan.close()


@pytest.mark.parametrize("retry_after", [86400, 1e300, "soon", [1], -5])
async def test_telegram_retry_after_is_capped_and_parsed_safely(retry_after: Any) -> None:
    chan = TelegramChannel(
        TelegramBotSettings(token=SecretStr(TOKEN), base_url="https://tg.test"),
        transport=_mock(
            429,
            json={
                "ok": False,
                "description": "Too Many Requests",
                "parameters": {"retry_after": retry_after},
            },
        ),
    )
    await chan.open()
    with pytest.raises(TransientSendError) as info:
        await chan.send(MSG)
    assert info.value.retry_after is not None and 0 <= info.value.retry_after <= MAX_RETRY_AFTER_S


def test_transient_errors_cap_retry_after_themselves() -> None:
    assert TransientSendError("x", retry_after=10**9).retry_after == MAX_RETRY_AFTER_S
    assert TransientSendError("x", retry_after=float("nan")).retry_after is None
    assert TransientSendError("x", retry_after=-3).retry_after == 0.0
    assert TransientSendError("x", retry_after=2.5).retry_after == 2.5
    assert 60 <= MAX_RETRY_AFTER_S <= 600


@pytest.mark.parametrize(
    "answer",
    [
        {"ok": False, "parameters": [1]},
        {"ok": True, "result": 5},
        {"ok": False, "description": {"x": 1}},
    ],
)
async def test_odd_telegram_answers_are_classified(answer: Any) -> None:
    chan = TelegramChannel(
        TelegramBotSettings(token=SecretStr(TOKEN), base_url="https://tg.test"),
        transport=_mock(400 if not answer.get("ok") else 200, json=answer),
    )
    await chan.open()
    with contextlib.suppress(SendError):  # any classification, but never another exception
        await chan.send(MSG)
