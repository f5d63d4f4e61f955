"""Request bodies of the HTTP API (and of the launch-campaign flow)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr

from models.enums import Channel


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("name must not be blank")
    return value


# A campaign's name: 1-200 characters, not only blanks.
CampaignName = Annotated[StrictStr, Field(min_length=1, max_length=200), AfterValidator(_not_blank)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False)


class TemplateLanguage(BaseModel):
    code: StrictStr = Field(min_length=1, max_length=20)


class WhatsAppTemplate(_Body):
    """A WhatsApp Cloud API template; `language` may be "en_US" or {"code": "en_US"}."""

    name: StrictStr = Field(min_length=1, max_length=512)
    language: StrictStr | TemplateLanguage
    components: list[dict[str, Any]] = Field(default_factory=list)

    def language_code(self) -> str:
        """The language code whichever form it was given in."""
        return self.language if isinstance(self.language, str) else self.language.code

    def to_cloud_api(self) -> dict[str, Any]:
        """The template object as the Cloud API takes it."""
        return {
            "name": self.name,
            "language": {"code": self.language_code()},
            "components": self.components,
        }


class CampaignCreate(_Body):
    name: CampaignName
    channel: Channel
    contact_list_id: StrictStr = Field(min_length=1, max_length=64)
    sender_id: StrictStr = Field(min_length=1, max_length=320)
    body: StrictStr | None = None
    template: WhatsAppTemplate | None = None
    subject: StrictStr | None = Field(default=None, max_length=998)
    scheduled_at: datetime | None = None


class CampaignUpdate(_Body):
    """PATCH /v1/campaigns/{id}: any of these; `scheduled_at: null` means send now."""

    name: CampaignName | None = None
    body: StrictStr | None = None
    template: WhatsAppTemplate | None = None
    subject: StrictStr | None = Field(default=None, max_length=998)
    scheduled_at: datetime | None = None


class CampaignRetry(_Body):
    """POST /v1/campaigns/{id}/retry: optionally the error codes to retry instead of the
    default set (transient failures, outages, cancelled, unresolved outcome_unknown)."""

    error_codes: list[StrictStr] | None = Field(default=None, min_length=1, max_length=100)


class ContactCreate(_Body):
    name: StrictStr = Field(min_length=1, max_length=200)
    phone: StrictStr = Field(min_length=1, max_length=32)
    email: StrictStr | None = Field(default=None, max_length=320)
    telegram_chat_id: StrictStr | int | None = None
    slack_user_id: StrictStr | None = Field(default=None, max_length=64)
    attributes: dict[str, StrictStr] = Field(default_factory=dict)
    lists: list[StrictStr] = Field(default_factory=list)


class ContactUpdate(_Body):
    name: StrictStr | None = Field(default=None, min_length=1, max_length=200)
    phone: StrictStr | None = Field(default=None, min_length=1, max_length=32)
    email: StrictStr | None = Field(default=None, max_length=320)
    telegram_chat_id: StrictStr | int | None = None
    slack_user_id: StrictStr | None = Field(default=None, max_length=64)
    attributes: dict[str, StrictStr] | None = None
    lists: list[StrictStr] | None = None
    subscribed: bool | None = None


class ContactListCreate(_Body):
    name: StrictStr = Field(min_length=1, max_length=200)


class ListContactsAdd(_Body):
    contact_ids: list[StrictStr] = Field(min_length=1, max_length=10_000)


class SenderIdCreate(_Body):
    value: StrictStr = Field(min_length=1, max_length=320)
    channel: Channel
