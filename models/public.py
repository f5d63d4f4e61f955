"""Response bodies of the HTTP API, as `/openapi.json` describes them (SPEC §2, §7, §9)."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class ErrorBody(BaseModel):
    """Every error the API returns, whatever its status."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": "not_found",
                    "message": "campaign not found",
                    "details": None,
                    "request_id": "req_5f0c6a1e9b2d4c7a8e3f1b20",
                }
            ]
        }
    )

    error: str = Field(description="A stable code, e.g. invalid_request, not_found, rate_limit_exceeded.")
    message: str = Field(description="Human-readable text.")
    details: dict[str, Any] | None = Field(description="More about the error, e.g. the fields at fault.")
    request_id: str = Field(description="The X-Request-ID of this response.")


class PageMeta(BaseModel):
    page: int = Field(ge=1)
    per_page: int = Field(ge=1, le=100)
    total: int = Field(ge=0)


class Page(BaseModel, Generic[T]):
    """A page of a list, newest first."""

    data: list[T]
    meta: PageMeta


def _ts(description: str) -> Any:
    return Field(description=description, json_schema_extra={"format": "date-time"})


# ISO 8601 UTC with a Z suffix, second precision, e.g. 2026-07-01T08:00:00Z.
Timestamp = str


class CampaignPublic(BaseModel):
    """A campaign with its live counts (SPEC §2, §7)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "cmp_3k9v0m2x7q1w8e5r4t6y2u0i",
                    "name": "July promo",
                    "status": "processing",
                    "channel": "sms",
                    "contact_list_id": "lst_8h2j4k6l1z3x5c7v9b0n2m4q",
                    "sender_id": "sid_1a2s3d4f5g6h7j8k9l0p1o2i",
                    "sender_value": "MYBRAND",
                    "body": "Hi {{first_name}}, 20% off today.",
                    "template": None,
                    "subject": None,
                    "html": None,
                    "send_window": {"start": "09:00", "end": "20:00"},
                    "total_recipients": 3,
                    "delivered_count": 1,
                    "failed_count": 0,
                    "skipped_count": 0,
                    "sent_count": 1,
                    "pending_count": 1,
                    "credits_reserved": 3,
                    "credits_used": 0,
                    "scheduled_at": None,
                    "paused_at": None,
                    "retry_of": None,
                    "schedule_id": None,
                    "created_at": "2026-07-01T08:00:00Z",
                    "started_at": "2026-07-01T08:00:01Z",
                    "dispatched_at": None,
                    "completed_at": None,
                    "cancelled_at": None,
                    "failure_reason": None,
                    "flow_run_id": "0e3f5a7c-1b2d-4e6f-8a9b-0c1d2e3f4a5b",
                }
            ]
        }
    )

    id: str
    name: str
    status: str = Field(
        description="draft, scheduled, processing, paused, sent, completed, failed or cancelled."
    )
    channel: str = Field(description="sms, whatsapp, telegram, email or slack.")
    contact_list_id: str
    sender_id: str = Field(description="The sid_ id of the sender ID.")
    sender_value: str = Field(description="The sender ID's value, e.g. MYBRAND.")
    body: str | None
    template: dict[str, Any] | None
    subject: str | None
    html: str | None = Field(description="Email only: the HTML part (body is the text part).")
    send_window: dict[str, str] | None = Field(
        description='Quiet hours, e.g. {"start": "09:00", "end": "20:00"} of each recipient\'s local time.'
    )
    total_recipients: int
    delivered_count: int
    failed_count: int = Field(description="undelivered + failed messages.")
    skipped_count: int = Field(description="List members not targeted (opted out, no address).")
    sent_count: int
    pending_count: int
    credits_reserved: int
    credits_used: int
    scheduled_at: Timestamp | None = _ts("When sending starts (null: now).")
    paused_at: Timestamp | None = _ts("When the campaign was paused.")
    retry_of: str | None = Field(description="The campaign this one retries.")
    schedule_id: str | None = Field(description="The schedule that created this campaign.")
    created_at: Timestamp = _ts("When the campaign was created.")
    started_at: Timestamp | None = _ts("When sending started.")
    dispatched_at: Timestamp | None = _ts("When the last message was handed to the provider.")
    completed_at: Timestamp | None = _ts("When the campaign reached a final status.")
    cancelled_at: Timestamp | None = _ts("When the campaign was cancelled.")
    failure_reason: str | None
    flow_run_id: str | None = Field(description="The Prefect flow run sending it.")


class MessagePublic(BaseModel):
    """One per-recipient record."""

    id: str
    contact_id: str
    to: str = Field(description="The address the message went to.")
    status: str = Field(description="pending, sending, sent, delivered, undelivered or failed.")
    provider_message_id: str | None
    error_code: str | None = Field(
        description='The provider\'s code (e.g. "21211") or ours (e.g. "opted_out").'
    )
    error_message: str | None
    attempts: int
    sent_at: Timestamp | None = _ts("When the provider accepted it.")
    updated_at: Timestamp = _ts("Last change.")


class ContactPublic(BaseModel):
    """A contact with the ids of its lists."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "cnt_9q8w7e6r5t4y3u2i1o0p9a8s",
                    "name": "Ada Lovelace",
                    "phone": "+14155550100",
                    "email": "ada@example.com",
                    "telegram_chat_id": None,
                    "slack_user_id": None,
                    "attributes": {"city": "London"},
                    "timezone": "Europe/London",
                    "lists": ["lst_8h2j4k6l1z3x5c7v9b0n2m4q"],
                    "subscribed": True,
                    "opted_out_channels": [],
                    "unsubscribed_at": None,
                    "created_at": "2026-07-01T08:00:00Z",
                    "updated_at": "2026-07-01T08:00:00Z",
                }
            ]
        }
    )

    id: str
    name: str
    phone: str
    email: str | None
    telegram_chat_id: str | None
    slack_user_id: str | None
    attributes: dict[str, Any]
    timezone: str | None = Field(
        description="IANA time zone of send windows; null: derived from the phone number's country."
    )
    lists: list[str]
    subscribed: bool
    opted_out_channels: list[str] = Field(
        description='Channels the contact left one by one, e.g. ["email"] (unsubscribed_at: all of them).'
    )
    unsubscribed_at: Timestamp | None = _ts("When the contact opted out.")
    created_at: Timestamp = _ts("Created.")
    updated_at: Timestamp = _ts("Last change.")


class ContactListPublic(BaseModel):
    id: str
    name: str
    contact_count: int
    created_at: Timestamp = _ts("Created.")


class ListContactsAdded(ContactListPublic):
    added: int = Field(description="Contacts that were not in the list before.")


class RejectedRow(BaseModel):
    row: int = Field(description="1-based row number in the body (CSV: after the header).")
    reason: str
    phone: Any = Field(default=None, description="The row's phone as given.")


class ImportResultPublic(BaseModel):
    created: int
    updated: int
    rejected: int
    rejected_rows: list[RejectedRow]


class SenderIdPublic(BaseModel):
    id: str
    value: str
    channel: str
    status: str = Field(description="pending, approved or rejected.")
    created_at: Timestamp = _ts("Registered.")


class CreditsPublic(BaseModel):
    balance: int
    reserved: int = Field(description="Held by open campaigns.")
    available: int = Field(description="balance - reserved.")


class ApiKeyPublic(BaseModel):
    """An API key as listed: never the key itself."""

    id: str
    name: str | None
    prefix: str = Field(description="The key's first 8 characters.")
    created_at: Timestamp = _ts("Created.")
    last_used_at: Timestamp | None = _ts("Last authenticated request (to the minute).")
    revoked_at: Timestamp | None = _ts("Revoked.")


class ApiKeyCreated(BaseModel):
    """A new API key: `api_key` is shown this once."""

    id: str
    name: str | None
    api_key: str
    prefix: str
    created_at: Timestamp = _ts("Created.")


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class ScheduleCampaignPublic(BaseModel):
    """The campaign a schedule creates at each run (as Prefect holds it: an operator may edit
    it in the UI)."""

    name: str
    channel: str
    contact_list_id: str
    sender_id: str
    body: str | None
    template: dict[str, Any] | None
    subject: str | None
    html: str | None = None
    send_window: dict[str, str] | None = None


class SchedulePublic(BaseModel):
    """A recurring campaign: a schedule of the Prefect deployment launch-campaign/default."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "sch_2c4e6g8i0k1m3o5q7s9u1w3y",
                    "name": "Monday digest",
                    "cron": "0 9 * * 1",
                    "interval_seconds": None,
                    "timezone": "Europe/Paris",
                    "active": True,
                    "next_run_at": "2026-07-06T07:00:00Z",
                    "campaign": {
                        "name": "Monday digest",
                        "channel": "email",
                        "contact_list_id": "lst_8h2j4k6l1z3x5c7v9b0n2m4q",
                        "sender_id": "news@example.com",
                        "body": "Hi {{first_name}}, here is this week's news.",
                        "template": None,
                        "subject": None,
                    },
                    "created_at": "2026-07-01T08:00:00Z",
                }
            ]
        }
    )

    id: str = Field(description="sch_…, also the Prefect deployment schedule's slug.")
    name: str
    cron: str | None
    interval_seconds: int | None
    timezone: str = Field(description="IANA time zone the cron is read in.")
    active: bool = Field(description="False while paused (here or in the Prefect UI).")
    next_run_at: Timestamp | None = _ts("The next firing (null while paused).")
    campaign: ScheduleCampaignPublic
    created_at: Timestamp = _ts("Created.")
