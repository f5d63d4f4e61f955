"""Logging for every process: context variables carried into each record, text or JSON."""

from __future__ import annotations

import contextvars

# Set by the API per request and by the flows per campaign; read by the log formatter.
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
account_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("account_id", default="")
campaign_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("campaign_id", default="")
