"""Database tables. Timestamps are naive UTC; ids are prefixed random strings."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, CheckConstraint, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


class Account(SQLModel, table=True):
    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint("balance >= 0", name="ck_accounts_balance_nonnegative"),
        CheckConstraint("reserved >= 0", name="ck_accounts_reserved_nonnegative"),
    )

    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=200)
    # Invariant kept by atomic UPDATEs only: 0 <= reserved <= balance.
    balance: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    reserved: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    created_at: datetime


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=40)
    account_id: str = Field(foreign_key="accounts.id", index=True, max_length=40)
    key_hash: str = Field(unique=True, max_length=64)
    prefix: str = Field(max_length=12)
    name: str | None = Field(default=None, max_length=200)
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class Schedule(SQLModel, table=True):
    """A recurring campaign's owner and name; its timing, `active` and campaign fields live in
    Prefect (the deployment schedule whose slug is this id), where operators see and edit them."""

    __tablename__ = "schedules"
    __table_args__ = (Index("ix_schedules_account_created", "account_id", "created_at"),)

    id: str = Field(primary_key=True, max_length=40)
    account_id: str = Field(foreign_key="accounts.id", max_length=40)
    name: str = Field(max_length=200)
    # A copy of the launch-campaign parameters: Prefect 3.9 empties a schedule's parameters on
    # any update that does not resend them (the UI's pause toggle), and they are put back from here.
    parameters: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime


class SenderId(SQLModel, table=True):
    __tablename__ = "sender_ids"
    __table_args__ = (UniqueConstraint("account_id", "channel", "value"),)

    id: str = Field(primary_key=True, max_length=40)
    account_id: str = Field(foreign_key="accounts.id", index=True, max_length=40)
    channel: str = Field(max_length=16)
    value: str = Field(max_length=320)
    status: str = Field(default="pending", max_length=16)
    created_at: datetime


class Contact(SQLModel, table=True):
    __tablename__ = "contacts"
    __table_args__ = (UniqueConstraint("account_id", "phone"),)

    id: str = Field(primary_key=True, max_length=40)
    account_id: str = Field(foreign_key="accounts.id", index=True, max_length=40)
    name: str = Field(max_length=200)
    phone: str = Field(max_length=20)
    email: str | None = Field(default=None, max_length=320)
    telegram_chat_id: str | None = Field(default=None, max_length=64)
    slack_user_id: str | None = Field(default=None, max_length=64)
    attributes: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # IANA zone of the contact's send windows; None: derived from the phone (core/zones.py).
    timezone: str | None = Field(default=None, max_length=64)
    unsubscribed_at: datetime | None = None
    created_at: datetime
    updated_at: datetime


class ChannelOptOut(SQLModel, table=True):
    """A contact that opted out of one channel only (e.g. blocked the Telegram bot)."""

    __tablename__ = "channel_opt_outs"

    contact_id: str = Field(foreign_key="contacts.id", primary_key=True, max_length=40)
    channel: str = Field(primary_key=True, max_length=16)
    created_at: datetime


class ContactList(SQLModel, table=True):
    __tablename__ = "contact_lists"

    id: str = Field(primary_key=True, max_length=40)
    account_id: str = Field(foreign_key="accounts.id", index=True, max_length=40)
    name: str = Field(max_length=200)
    created_at: datetime


class ListMembership(SQLModel, table=True):
    __tablename__ = "list_memberships"
    __table_args__ = (Index("ix_list_memberships_contact", "contact_id"),)

    list_id: str = Field(foreign_key="contact_lists.id", primary_key=True, max_length=40)
    contact_id: str = Field(foreign_key="contacts.id", primary_key=True, max_length=40)
    created_at: datetime


class Campaign(SQLModel, table=True):
    __tablename__ = "campaigns"
    __table_args__ = (
        Index("ix_campaigns_account_created", "account_id", "created_at"),
        # The per-account cap on open campaigns counts by status at every create.
        Index("ix_campaigns_account_status", "account_id", "status"),
    )

    id: str = Field(primary_key=True, max_length=40)
    account_id: str = Field(foreign_key="accounts.id", index=True, max_length=40)
    name: str = Field(max_length=200)
    channel: str = Field(max_length=16)
    contact_list_id: str = Field(max_length=40)
    # The sender ID as the create named it: its value (up to 320 characters) or its sid_ id.
    sender_id: str = Field(max_length=320)
    sender_value: str = Field(max_length=320)
    body: str | None = None
    template: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    subject: str | None = Field(default=None, max_length=998)
    # Email only: the HTML part (then `body` is the text part).
    html: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # Quiet hours: {"start": "09:00", "end": "20:00"} of each recipient's local time, or None.
    send_window: dict[str, str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    status: str = Field(default="draft", max_length=16, index=True)
    scheduled_at: datetime | None = None
    paused_at: datetime | None = None
    # The campaign this one retries (POST /v1/campaigns/{id}/retry) and the schedule that created it.
    retry_of: str | None = Field(default=None, max_length=40, index=True)
    schedule_id: str | None = Field(default=None, max_length=40, index=True)
    # Bumped by every pause, resume and cancel: senders report the version they have seen (so a
    # pause or cancel answers only once they stopped), and chunk runs started after a resume get
    # new idempotency keys.
    control_version: int = 0
    created_at: datetime
    started_at: datetime | None = None
    dispatched_at: datetime | None = None
    completed_at: datetime | None = None
    cancelled_at: datetime | None = None
    failure_reason: str | None = None
    flow_run_id: str | None = Field(default=None, max_length=40)
    # Bumped when a run is stopped by a worker shutdown and must be relaunched (new run key).
    resume_count: int = 0
    # Written by the running flow every few seconds; a stale one means the run died silently.
    heartbeat_at: datetime | None = None
    total_recipients: int = 0
    skipped_count: int = 0
    credits_reserved: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    credits_used: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    snapshot_at: datetime | None = None
    settled_at: datetime | None = None
    # Messages per status, stored for big campaigns (counting a million rows per GET is too
    # slow); refreshed by the running flow every few seconds and whenever the campaign ends.
    status_counts: dict[str, int] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    counts_at: datetime | None = None


class Message(SQLModel, table=True):
    """One row per (campaign, contact): the ledger that makes sends at-most-once."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("campaign_id", "contact_id"),
        Index("ix_messages_campaign_seq", "campaign_id", "seq"),
        Index("ix_messages_campaign_status", "campaign_id", "status"),
        Index("ix_messages_claim", "claim_token"),
        Index("ix_messages_provider_id", "provider_message_id"),
    )

    id: str = Field(primary_key=True, max_length=40)
    campaign_id: str = Field(foreign_key="campaigns.id", max_length=40)
    contact_id: str = Field(max_length=40)
    seq: int
    to_address: str = Field(max_length=320)
    # The recipient's IANA zone, fixed at the snapshot when the campaign has a send window.
    zone: str | None = Field(default=None, max_length=64)
    status: str = Field(default="pending", max_length=16)
    cost: int = 1
    attempts: int = 0
    # The send attempt (lease) holding this message while it is `sending`.
    claim_token: str | None = Field(default=None, max_length=40)
    # The personalized fields fixed at the snapshot ({"body", "subject", "template"}), so the
    # provider receives exactly what was priced; None when nothing is personalized.
    content: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    # A failure that may pass on another try (transient, cancelled, outcome unknown): the
    # default audience of POST /v1/campaigns/{id}/retry.
    retryable: bool = False
    provider_message_id: str | None = Field(default=None, max_length=128)
    error_code: str | None = Field(default=None, max_length=64)
    error_message: str | None = None
    sent_at: datetime | None = None
    updated_at: datetime


class SendAttempt(SQLModel, table=True):
    """One chunk attempt's lease on a seq range: the messages it claimed are its own while the
    lease is alive (renewed several times a second); only an expired or ended attempt's rows
    are ever recovered by another attempt."""

    __tablename__ = "send_attempts"
    __table_args__ = (Index("ix_send_attempts_campaign", "campaign_id", "ended_at"),)

    id: str = Field(primary_key=True, max_length=40)
    campaign_id: str = Field(max_length=40)
    seq_start: int
    seq_end: int
    # The Prefect flow run whose process holds the lease (its end frees the lease at once).
    flow_run_id: str | None = Field(default=None, max_length=40, index=True)
    started_at: datetime
    renewed_at: datetime
    expires_at: datetime
    ended_at: datetime | None = None
    # The campaign's control_version this attempt last saw (a pause or cancel waits for it).
    seen_version: int = 0


class SenderSlot(SQLModel, table=True):
    """A lease on a (channel, sender): the campaign holding it is the only one sending through
    that sender across every worker. It expires unless renewed, so a dead holder frees it."""

    __tablename__ = "sender_slots"

    name: str = Field(primary_key=True, max_length=200)
    holder: str = Field(max_length=40)
    acquired_at: datetime
    expires_at: datetime


class StatusEvent(SQLModel, table=True):
    """A provider status that arrived before its send result was recorded (webhooks can beat
    our own bookkeeping); replayed once the message has its provider id."""

    __tablename__ = "status_events"

    id: int | None = Field(default=None, primary_key=True)
    provider_message_id: str = Field(index=True, max_length=128)
    status: str = Field(max_length=16)
    error_code: str | None = Field(default=None, max_length=64)
    error_message: str | None = None
    received_at: datetime


class CreditEntry(SQLModel, table=True):
    """Append-only credit ledger: top-ups, holds, charges and releases."""

    __tablename__ = "credit_entries"

    id: int | None = Field(default=None, primary_key=True)
    account_id: str = Field(foreign_key="accounts.id", index=True, max_length=40)
    campaign_id: str | None = Field(default=None, index=True, max_length=40)
    kind: str = Field(max_length=16)
    amount: int = Field(sa_column=Column(BigInteger, nullable=False))
    created_at: datetime


class AppSecret(SQLModel, table=True):
    """Keys the product makes for itself once and every process shares (e.g. the key that
    signs unsubscribe links when CAMPAIGNS_SECRET_KEY is not set)."""

    __tablename__ = "app_secrets"

    name: str = Field(primary_key=True, max_length=64)
    value: str = Field(max_length=200)
    created_at: datetime


class RateBucket(SQLModel, table=True):
    """The per-account API token bucket when several API processes share one PostgreSQL."""

    __tablename__ = "rate_buckets"

    account_id: str = Field(primary_key=True, max_length=40)
    tokens: float
    updated: float  # database clock, epoch seconds


class IdempotencyRecord(SQLModel, table=True):
    """A stored response for an Idempotency-Key, replayed for 24 hours."""

    __tablename__ = "idempotency_records"

    account_id: str = Field(primary_key=True, max_length=40)
    key: str = Field(primary_key=True, max_length=255)
    request_hash: str = Field(max_length=64)
    status_code: int
    response: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime


class WebhookEndpoint(SQLModel, table=True):
    """Where an account wants its events POSTed (SPEC §9), with the secret that signs them."""

    __tablename__ = "webhook_endpoints"

    id: str = Field(primary_key=True, max_length=40)
    account_id: str = Field(foreign_key="accounts.id", index=True, max_length=40)
    url: str = Field(max_length=2048)
    events: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    secret: str = Field(max_length=100)
    created_at: datetime


class WebhookDelivery(SQLModel, table=True):
    """The outbox: one row per (event, endpoint), inserted in the transaction of the change it
    reports and deleted... never: kept with `delivered_at` (or `failed_at` once retries gave up).
    Events of one campaign go out to an endpoint in `id` order."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_due", "delivered_at", "failed_at", "next_attempt_at"),
        Index("ix_webhook_deliveries_order", "endpoint_id", "campaign_id", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(max_length=40, index=True)
    endpoint_id: str = Field(max_length=40)
    account_id: str = Field(max_length=40)
    campaign_id: str | None = Field(default=None, max_length=40)
    type: str = Field(max_length=64)
    # The exact JSON body sent (and signed), fixed when the event happened.
    payload: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime
    attempts: int = 0
    next_attempt_at: datetime
    delivered_at: datetime | None = None
    failed_at: datetime | None = None
    last_error: str | None = Field(default=None, max_length=500)


class MetricCounter(SQLModel, table=True):
    """Counters of every process (flow runs, API workers), added to in batches and read by
    GET /metrics: the database is the one place all processes share."""

    __tablename__ = "metric_counters"

    name: str = Field(primary_key=True, max_length=100)
    # Canonical JSON of the label set, e.g. {"outcome":"accepted","provider":"twilio"}.
    labels: str = Field(primary_key=True, max_length=500)
    value: float = 0.0
