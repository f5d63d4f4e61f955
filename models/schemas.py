"""Request bodies of the HTTP API (and of the launch-campaign flow)."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

from models.enums import Channel


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("name must not be blank")
    return value


# A campaign's name: 1-200 characters, not only blanks.
CampaignName = Annotated[StrictStr, Field(min_length=1, max_length=200), AfterValidator(_not_blank)]
# Every stored string is bounded (SPEC §9): ids, codes, addresses, attribute keys and values.
Id = Annotated[StrictStr, Field(min_length=1, max_length=64)]
ErrorCodeText = Annotated[StrictStr, Field(min_length=1, max_length=64)]
AttributeKey = Annotated[StrictStr, Field(min_length=1, max_length=1000)]
AttributeValue = Annotated[StrictStr, Field(max_length=1000)]
MAX_ATTRIBUTES = 100
MAX_LISTS = 1000
# The columns are VARCHAR(64); Telegram chat ids fit in 52 bits (and a sign).
TelegramChatId = (
    Annotated[StrictStr, Field(min_length=1, max_length=64)]
    | Annotated[StrictInt, Field(ge=-(2**53), le=2**53)]
)
SlackUserId = Annotated[StrictStr, Field(max_length=64)]
# An IANA time zone name ("Europe/Paris"); an unknown name is a 422, checked in core.
Zone = Annotated[StrictStr, Field(min_length=1, max_length=64, examples=["Europe/Paris"])]


# NUL (PostgreSQL refuses to store it) and unpaired UTF-16 surrogates ("\ud800" is valid JSON
# but no UTF-8 text: the database and the JSON encoder refuse it).
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def has_nul(value: Any) -> bool:
    """True if a NUL character or an unpaired surrogate is in any string of a JSON value.
    Iterative: a body nested hundreds of levels deep must not overflow the stack."""
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            if UNSTORABLE.search(item):
                return True
        elif isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return False


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False)

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        if has_nul(data):
            raise ValueError("strings must not contain NUL characters or unpaired surrogates")
        return data


class TemplateLanguage(BaseModel):
    code: StrictStr = Field(min_length=1, max_length=20)


# The JSON size of the fields of one parameter other than `type`/`text` (an image link, a
# currency, a date_time, a payload): generous for the Cloud API, and bounded.
MAX_PARAMETER_JSON = 2048


class TemplateParameter(_Body):
    """One Cloud API template parameter: `type` plus the field it names ("text", "image",
    "currency", "payload"...), kept as given; only `text` takes placeholders."""

    model_config = ConfigDict(extra="allow")

    type: StrictStr = Field(min_length=1, max_length=32)
    text: StrictStr | None = Field(default=None, max_length=1024)

    @model_validator(mode="after")
    def _bounded(self) -> TemplateParameter:
        if len(json.dumps(self.model_extra or {})) > MAX_PARAMETER_JSON:
            raise ValueError(f"a template parameter takes at most {MAX_PARAMETER_JSON} characters of JSON")
        return self


class TemplateComponent(_Body):
    """One Cloud API template component (header, body, button)."""

    type: StrictStr = Field(min_length=1, max_length=32)
    sub_type: StrictStr | None = Field(default=None, max_length=32)
    index: Annotated[StrictInt, Field(ge=0, le=99)] | Annotated[StrictStr, Field(max_length=2)] | None = None
    parameters: list[TemplateParameter] | None = Field(default=None, max_length=100)


class WhatsAppTemplate(_Body):
    """A WhatsApp Cloud API template; `language` may be "en_US" or {"code": "en_US"}."""

    name: StrictStr = Field(min_length=1, max_length=512)
    language: Annotated[StrictStr, Field(min_length=1, max_length=20)] | TemplateLanguage
    components: list[TemplateComponent] = Field(default_factory=list, max_length=20)

    def language_code(self) -> str:
        """The language code whichever form it was given in."""
        return self.language if isinstance(self.language, str) else self.language.code

    def to_cloud_api(self) -> dict[str, Any]:
        """The template object as the Cloud API takes it."""
        return {
            "name": self.name,
            "language": {"code": self.language_code()},
            "components": [c.model_dump(exclude_unset=True) for c in self.components],
        }


# "HH:MM" of a 24-hour clock; "24:00" may end a window (the end of the day).
ClockTime = Annotated[
    StrictStr, Field(pattern=r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$", examples=["09:00", "20:00"])
]
# An HTML part bigger than this is clipped by Gmail ("[Message clipped]"), hiding the footer.
MAX_HTML_BYTES = 102_400


class SendWindow(_Body):
    """Quiet hours: messages go out only between `start` and `end` of each recipient's local
    time (start < end)."""

    model_config = ConfigDict(extra="forbid")

    start: ClockTime
    end: ClockTime


class CampaignCreate(_Body):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "name": "Weekend Sale",
                    "channel": "sms",
                    "contact_list_id": "lst_8h2j4k6l1z3x5c7v9b0n2m4q",
                    "sender_id": "MYBRAND",
                    "body": "Hi {{first_name}}, 20% off this weekend.",
                    "scheduled_at": "2026-07-01T08:00:00Z",
                },
                {
                    "name": "Order update",
                    "channel": "whatsapp",
                    "contact_list_id": "lst_8h2j4k6l1z3x5c7v9b0n2m4q",
                    "sender_id": "106540352242922",
                    "template": {
                        "name": "order_update",
                        "language": "en_US",
                        "components": [{"type": "body", "parameters": [{"type": "text", "text": "42"}]}],
                    },
                },
            ]
        },
    )

    name: CampaignName
    channel: Channel
    contact_list_id: StrictStr = Field(min_length=1, max_length=64)
    sender_id: StrictStr = Field(min_length=1, max_length=320)
    body: StrictStr | None = None
    template: WhatsAppTemplate | None = None
    subject: StrictStr | None = Field(default=None, max_length=998)
    html: StrictStr | None = Field(
        default=None, description="Email only: the HTML part; `body` is then the text part."
    )
    send_window: SendWindow | None = Field(
        default=None,
        description="Quiet hours: send only between start and end of each recipient's local time.",
    )
    scheduled_at: datetime | None = None


class ScheduleCampaign(CampaignCreate):
    """The campaign a schedule creates each time it fires: POST /v1/campaigns's fields except
    `scheduled_at` (each run's time is the schedule's)."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "name": "Monday digest",
                    "channel": "email",
                    "contact_list_id": "lst_8h2j4k6l1z3x5c7v9b0n2m4q",
                    "sender_id": "news@example.com",
                    "body": "Hi {{first_name}}, here is this week's news.",
                }
            ]
        },
    )

    @model_validator(mode="before")
    @classmethod
    def _no_scheduled_at(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("scheduled_at") is not None:
            raise ValueError(
                "scheduled_at is not allowed here: the schedule decides when each campaign sends"
            )
        return data


# Prefect plans up to 100 future runs of a schedule; a year is the longest interval we accept.
MIN_INTERVAL_S = 1
MAX_INTERVAL_S = 366 * 86400


class ScheduleCreate(_Body):
    """POST /v1/schedules: a cron expression or an interval, a time zone and the campaign."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "name": "Monday digest",
                    "cron": "0 9 * * 1",
                    "timezone": "Europe/Paris",
                    "campaign": {
                        "name": "Monday digest",
                        "channel": "email",
                        "contact_list_id": "lst_8h2j4k6l1z3x5c7v9b0n2m4q",
                        "sender_id": "news@example.com",
                        "body": "Hi {{first_name}}, here is this week's news.",
                    },
                }
            ]
        },
    )

    name: CampaignName
    cron: StrictStr | None = Field(
        default=None, min_length=1, max_length=200, description="Five-field cron, e.g. '0 9 * * 1'."
    )
    interval_seconds: StrictInt | None = Field(
        default=None,
        ge=MIN_INTERVAL_S,
        le=MAX_INTERVAL_S,
        description="Seconds between runs; instead of cron.",
    )
    timezone: StrictStr | None = Field(
        default="UTC", min_length=1, max_length=64, description="IANA time zone (null: UTC)."
    )
    campaign: ScheduleCampaign

    @model_validator(mode="after")
    def _one_timing(self) -> ScheduleCreate:
        if (self.cron is None) == (self.interval_seconds is None):
            raise ValueError("give exactly one of cron and interval_seconds")
        return self


class CampaignUpdate(_Body):
    """PATCH /v1/campaigns/{id}: any of these; `scheduled_at: null` means send now."""

    name: CampaignName | None = None
    body: StrictStr | None = None
    template: WhatsAppTemplate | None = None
    subject: StrictStr | None = Field(default=None, max_length=998)
    html: StrictStr | None = None
    send_window: SendWindow | None = None
    scheduled_at: datetime | None = None


class CampaignRetry(_Body):
    """POST /v1/campaigns/{id}/retry: optionally the error codes to retry instead of the
    default set (transient failures, outages, cancelled, unresolved outcome_unknown)."""

    error_codes: list[ErrorCodeText] | None = Field(default=None, min_length=1, max_length=100)


class ContactCreate(_Body):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "name": "Ada Lovelace",
                    "phone": "+14155550100",
                    "email": "ada@example.com",
                    "attributes": {"city": "London"},
                    "lists": ["lst_8h2j4k6l1z3x5c7v9b0n2m4q"],
                }
            ]
        },
    )

    name: StrictStr = Field(min_length=1, max_length=200)
    phone: StrictStr = Field(min_length=1, max_length=32)
    email: StrictStr | None = Field(default=None, max_length=320)
    telegram_chat_id: TelegramChatId | None = None
    slack_user_id: SlackUserId | None = None
    timezone: Zone | None = None
    attributes: dict[AttributeKey, AttributeValue] = Field(default_factory=dict, max_length=MAX_ATTRIBUTES)
    lists: list[Id] = Field(default_factory=list, max_length=MAX_LISTS)


class ContactUpdate(_Body):
    name: StrictStr | None = Field(default=None, min_length=1, max_length=200)
    phone: StrictStr | None = Field(default=None, min_length=1, max_length=32)
    email: StrictStr | None = Field(default=None, max_length=320)
    telegram_chat_id: TelegramChatId | None = None
    slack_user_id: SlackUserId | None = None
    timezone: Zone | None = None
    attributes: dict[AttributeKey, AttributeValue] | None = Field(default=None, max_length=MAX_ATTRIBUTES)
    lists: list[Id] | None = Field(default=None, max_length=MAX_LISTS)
    subscribed: bool | None = None


class ContactListCreate(_Body):
    name: StrictStr = Field(min_length=1, max_length=200)


class ListContactsAdd(_Body):
    contact_ids: list[Id] = Field(min_length=1, max_length=10_000)


class SenderIdCreate(_Body):
    value: StrictStr = Field(min_length=1, max_length=320)
    channel: Channel
