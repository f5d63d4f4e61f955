"""The one settings class: environment variables with prefix CAMPAIGNS_, nested with __."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Each adapter owns its settings model; this module composes them (channels/ imports nothing of core).
from channels.email_sendgrid import SendGridSettings
from channels.email_smtp import SmtpSettings
from channels.sandbox import SandboxSettings
from channels.slack_web import SlackWebSettings
from channels.sms_twilio import TwilioSettings
from channels.telegram_bot import TelegramBotSettings
from channels.whatsapp_cloud import WhatsAppCloudSettings
from core.zones import is_zone

__all__ = [
    "SandboxSettings",
    "SendGridSettings",
    "Settings",
    "SlackWebSettings",
    "SmtpSettings",
    "TelegramBotSettings",
    "TwilioSettings",
    "WhatsAppCloudSettings",
    "get_settings",
]


class ApiSettings(BaseModel):
    """Per-account token bucket of the HTTP API."""

    rate_per_second: float = 20.0
    burst: int = 40
    # Processes of `campaigns api`. On PostgreSQL they share each account's bucket; on SQLite
    # each keeps 1/workers of it in memory (together: the account's rate).
    workers: int = Field(default=1, ge=1, le=32)
    # An API key stays valid this long in each API process's memory after a lookup.
    key_cache_s: float = Field(default=5.0, ge=0)
    # Request bodies over these sizes are 413 payload_too_large before they are parsed.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_import_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_webhook_bytes: int = Field(default=256 * 1024, ge=1024)
    # Campaigns an account may have open (draft, scheduled, processing, paused, sent) at once.
    max_open_campaigns: int = Field(default=1000, ge=1)
    # Schedules an account may have (each is up to 100 planned runs in Prefect).
    max_schedules: int = Field(default=100, ge=1)


class WebhooksSettings(BaseModel):
    """Event webhooks (SPEC §9): delivery by the workers, retried with exponential backoff."""

    # Loopback, private and link-local targets are refused unless this is true.
    allow_private: bool = False
    timeout_s: float = Field(default=10.0, gt=0)
    # A delivery is retried with backoff (capped at max_backoff_s) until it is this old.
    retry_for_s: float = Field(default=3 * 86400.0, ge=0)
    max_backoff_s: float = Field(default=3600.0, gt=0)
    poll_interval_s: float = Field(default=1.0, gt=0)
    # Delivered and given-up rows are deleted from the outbox once they are this old.
    keep_s: float = Field(default=7 * 86400.0, ge=0)


class DeliverySettings(BaseModel):
    """How long transient errors are retried and how long receipts are awaited."""

    retry_window_s: float = 600.0
    final_status_timeout_s: float = 86400.0
    poll_interval_s: float = 2.0
    max_backoff_s: float = 60.0
    request_timeout_s: float = 10.0


class ChannelSettings(BaseModel):
    """Provider choice and pacing of one channel; None means the provider's own default."""

    provider: str = "sandbox"
    rate_per_second: float | None = None
    concurrency: int | None = None


class Settings(BaseSettings):
    """Everything configurable, read once through get_settings() and passed down."""

    model_config = SettingsConfigDict(
        env_prefix="CAMPAIGNS_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    data_dir: Path = Path("./.campaigns")
    database_url: str | None = None
    public_url: str | None = None
    # Signs one-click unsubscribe links (HMAC-SHA256). Unset: a random key kept in the app
    # database, made once and shared by every process (core/unsubscribe.py).
    secret_key: SecretStr | None = None
    # Recipients with no time zone of their own (and a phone number whose country has several)
    # are in this IANA zone for send windows (SPEC §10).
    default_timezone: str = "UTC"
    chunk_size: int = Field(default=1000, ge=1, le=100_000)
    chunk_concurrency: int = Field(default=2, ge=1, le=64)
    # Run chunks as flow runs of the deployment `send-campaign-chunk/default`, which any worker
    # polling the Prefect server picks up: several workers (and both cores of one machine) share
    # one campaign, each chunk in its own process. Off: chunks are task runs inside the
    # campaign's own flow process (no process start per chunk; best for small campaigns).
    distribute_chunks: bool = False
    # At most this many messages per chunk flow run when distributing (each run costs a
    # process start, ~3-5 s); runs are sized equally, in multiples of chunk_concurrency.
    chunk_run_size: int = Field(default=50_000, ge=1, le=1_000_000)
    # A chunk flow run that crashes (its worker died) is run again, this many times in all.
    chunk_run_attempts: int = Field(default=5, ge=1, le=100)
    prefect_port: int = 4200
    reconcile_interval_s: float = 10.0
    runner_limit: int = 8
    # Flow-run heartbeats; a run silent for 3 periods is marked Crashed (zombie automation).
    heartbeat_s: int = Field(default=30, ge=30)
    # A running campaign whose flow has not written its heartbeat (every 5 s) for this long is
    # dead: its run is crashed and resumed.
    stale_after_s: float = 30.0
    # How many times a crashed run is resumed automatically before the campaign fails.
    max_resumes: int = 3
    # A campaign sending through a real provider holds the sender's slot (a lease in the app
    # database, core/slots.py), so that campaigns on several workers sharing a sender take turns
    # and together respect the provider's limits.
    global_limits: bool = True

    # "text" (human-readable) or "json" (one object a line: ts, level, logger, message and
    # request_id / account_id / campaign_id where known).
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"

    api: ApiSettings = ApiSettings()
    webhooks: WebhooksSettings = WebhooksSettings()
    delivery: DeliverySettings = DeliverySettings()
    sms: ChannelSettings = ChannelSettings()
    whatsapp: ChannelSettings = ChannelSettings()
    telegram: ChannelSettings = ChannelSettings()
    email: ChannelSettings = ChannelSettings()
    slack: ChannelSettings = ChannelSettings()
    sandbox: SandboxSettings = SandboxSettings()
    twilio: TwilioSettings = TwilioSettings()
    whatsapp_cloud: WhatsAppCloudSettings = WhatsAppCloudSettings()
    telegram_bot: TelegramBotSettings = TelegramBotSettings()
    smtp: SmtpSettings = SmtpSettings()
    sendgrid: SendGridSettings = SendGridSettings()
    slack_web: SlackWebSettings = SlackWebSettings()

    @field_validator("default_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if not is_zone(value):
            raise ValueError(f"unknown IANA time zone {value!r}")
        return value

    def resolved_database_url(self) -> str:
        """The app database URL: explicit, or SQLite inside the data dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'campaigns.db').resolve()}"

    def channel(self, name: str) -> ChannelSettings:
        """Settings of one channel by its name."""
        value = getattr(self, name)
        assert isinstance(value, ChannelSettings), name
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings from the environment (and .env)."""
    return Settings()
