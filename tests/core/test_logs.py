"""Log lines: JSON or text, with request_id / account_id / campaign_id from context variables."""

from __future__ import annotations

import contextvars
import io
import json
import logging
import sys
from collections.abc import Iterator
from datetime import datetime

import pytest

from core.logs import (
    UVICORN_LOGGERS,
    ConsoleHandler,
    JsonFormatter,
    TextFormatter,
    account_id_var,
    campaign_id_var,
    configure_logging,
    request_id_var,
)
from core.settings import Settings

LOGGERS = ("", "campaigns", *UVICORN_LOGGERS)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state: put it back after the test."""
    loggers = {name: logging.getLogger(name) for name in LOGGERS}
    saved = {name: (lg.handlers[:], lg.level, lg.propagate) for name, lg in loggers.items()}
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


def _record(message: str = "sent %s", *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.getLogger("campaigns.sender").makeRecord(
        "campaigns.sender", logging.WARNING, __file__, 1, message, args or ("x",), exc_info
    )


def _in_context(fn: object, **values: str) -> str:
    def run() -> str:
        for var in (request_id_var, account_id_var, campaign_id_var):
            if var.name in values:
                var.set(values[var.name])
        return fn()  # type: ignore[operator]

    return contextvars.copy_context().run(run)


def test_json_lines_have_the_keys() -> None:
    line = JsonFormatter().format(_record("sent %s", 3))
    assert "\n" not in line
    data = json.loads(line)
    assert set(data) == {"ts", "level", "logger", "message"}  # no context set: no context keys
    assert data["level"] == "WARNING" and data["logger"] == "campaigns.sender" and data["message"] == "sent 3"
    assert data["ts"].endswith("Z")
    assert datetime.fromisoformat(data["ts"].replace("Z", "+00:00")).utcoffset().total_seconds() == 0  # type: ignore[union-attr]


def test_json_lines_carry_the_context_variables_and_the_traceback() -> None:
    line = _in_context(
        lambda: JsonFormatter().format(_record(exc=True)),
        request_id="req_1",
        account_id="acc_1",
        campaign_id="cmp_1",
    )
    data = json.loads(line)
    assert (data["request_id"], data["account_id"], data["campaign_id"]) == ("req_1", "acc_1", "cmp_1")
    assert "ValueError: boom" in data["exc_info"] and "Traceback" in data["exc_info"]


def test_text_lines_show_the_context_that_is_set() -> None:
    plain = TextFormatter().format(_record("sent %s", 3))
    assert plain.endswith("WARNING campaigns.sender: sent 3")
    line = _in_context(lambda: TextFormatter().format(_record("sent %s", 3)), campaign_id="cmp_9")
    assert line.endswith("campaigns.sender: sent 3 [campaign_id=cmp_9]")
    line = _in_context(lambda: TextFormatter().format(_record()), request_id="req_7", campaign_id="cmp_9")
    assert "[request_id=req_7 campaign_id=cmp_9]" in line


def test_defaults_are_text_at_info(monkeypatch: pytest.MonkeyPatch, restore_logging: None) -> None:
    monkeypatch.delenv("CAMPAIGNS_LOG_FORMAT", raising=False)
    monkeypatch.delenv("CAMPAIGNS_LOG_LEVEL", raising=False)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.log_format, settings.log_level) == ("text", "INFO")
    configure_logging(settings)
    ours = [h for h in logging.getLogger().handlers if isinstance(h, ConsoleHandler)]
    assert len(ours) == 1 and isinstance(ours[0].formatter, TextFormatter)
    assert logging.getLogger("campaigns.sender").getEffectiveLevel() == logging.INFO
    assert logging.getLogger("uvicorn.access").getEffectiveLevel() == logging.INFO  # access log on
    assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING


def test_json_configuration_replaces_console_handlers_and_keeps_others(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    kept = logging.StreamHandler(io.StringIO())  # e.g. a capture handler: not a console
    logging.getLogger().addHandler(kept)
    logging.getLogger("uvicorn.access").addHandler(logging.StreamHandler())  # as uvicorn/Prefect do
    configure_logging(Settings(log_format="json"))
    configure_logging(Settings(log_format="json"))  # again: still one handler of ours
    root = logging.getLogger()
    assert kept in root.handlers
    assert [type(h.formatter) for h in root.handlers if isinstance(h, ConsoleHandler)] == [JsonFormatter]
    assert logging.getLogger("uvicorn.access").handlers == []
    token = request_id_var.set("req_42")
    try:
        logging.getLogger("uvicorn.access").info(
            '%s - "%s %s HTTP/%s" %d', "1.2.3.4:5", "GET", "/x", "1.1", 200
        )
        logging.getLogger("campaigns.api").debug("not at INFO")
    finally:
        request_id_var.reset(token)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines == [
        {
            "ts": lines[0]["ts"],
            "level": "INFO",
            "logger": "uvicorn.access",
            "message": '1.2.3.4:5 - "GET /x HTTP/1.1" 200',
            "request_id": "req_42",
        }
    ]


def test_access_log_lines_hide_query_strings() -> None:
    """Found in review: with the access log on, WhatsApp's handshake wrote its verify token
    (`?hub.verify_token=…`) into every log line."""
    import logging

    from core.logs import HideQueryStrings

    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        (
            "127.0.0.1:5000",
            "GET",
            "/v1/webhooks/whatsapp?hub.verify_token=s3cret&hub.challenge=1",
            "1.1",
            200,
        ),
        None,
    )
    assert HideQueryStrings().filter(record)
    line = record.getMessage()
    assert "s3cret" not in line and "/v1/webhooks/whatsapp?…" in line
