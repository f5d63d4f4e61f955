"""Logging for every process: context variables carried into each record, text or JSON."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from core.settings import Settings

# Set by the API per request and by the flows per campaign; read by the log formatter.
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
account_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("account_id", default="")
campaign_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("campaign_id", default="")

CONTEXT = (("request_id", request_id_var), ("account_id", account_id_var), ("campaign_id", campaign_id_var))
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# uvicorn's own loggers; without a handler of their own they propagate to ours on the root.
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def context() -> dict[str, str]:
    """The context variables that are set, by name."""
    return {name: value for name, var in CONTEXT if (value := var.get())}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts (ISO 8601 UTC), level, logger, message, the context variables
    that are set, and exc_info (the traceback text) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        out: dict[str, Any] = {
            "ts": ts.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **context(),
        }
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc_info"] = record.exc_text
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, followed by `[request_id=… campaign_id=…]` when set."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The line before any traceback, with the context variables that are set."""
        line = super().formatMessage(record)
        found = context()
        if not found:
            return line
        return f"{line} [{' '.join(f'{k}={v}' for k, v in found.items())}]"


class HideQueryStrings(logging.Filter):
    """Access-log lines show paths without their query strings: a provider's handshake carries
    its secret there (WhatsApp's `hub.verify_token`), and queries are the tenants' business."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0] + "?…", *args[3:])
        return True


_HIDE_QUERIES = HideQueryStrings()


class ConsoleHandler(logging.StreamHandler[TextIO]):
    """Ours, so that configuring again replaces it instead of adding a second one (and not
    named with a leading underscore: Prefect keeps a root handler only if it is not)."""


def configure_logging(settings: Settings) -> None:
    """Log to stderr in settings.log_format at settings.log_level: our `campaigns.*` loggers,
    uvicorn's (the access log included) and the root. Other libraries stay at WARNING (httpx
    logs every request at INFO). Console handlers on the root (Python's or Prefect's) are
    replaced by ours; other handlers (Prefect's API handler on its run loggers, pytest's
    capture) are left alone. Safe to call again, e.g. after importing Prefect, which gives
    uvicorn's loggers a console handler of its own."""
    level = logging.getLevelName(settings.log_level.upper())
    if not isinstance(level, int):
        level = logging.INFO
    handler = ConsoleHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if _is_console(old):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(level, logging.WARNING))
    logging.getLogger("campaigns").setLevel(level)
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.setLevel(level)
        logger.propagate = True
    access = logging.getLogger("uvicorn.access")
    if _HIDE_QUERIES not in access.filters:
        access.addFilter(_HIDE_QUERIES)


def _is_console(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None)
    return isinstance(handler, ConsoleHandler) or (
        type(handler) is not logging.FileHandler and stream in (sys.stderr, sys.stdout, sys.__stderr__)
    )
