"""String enums for every status and kind that crosses the API."""

from __future__ import annotations

from enum import StrEnum


class Channel(StrEnum):
    sms = "sms"
    whatsapp = "whatsapp"
    telegram = "telegram"
    email = "email"
    slack = "slack"


class CampaignStatus(StrEnum):
    draft = "draft"
    scheduled = "scheduled"
    processing = "processing"
    paused = "paused"
    sent = "sent"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


FINAL_CAMPAIGN_STATUSES = frozenset(
    {CampaignStatus.completed, CampaignStatus.failed, CampaignStatus.cancelled}
)


class MessageStatus(StrEnum):
    pending = "pending"
    sending = "sending"
    sent = "sent"
    delivered = "delivered"
    undelivered = "undelivered"
    failed = "failed"


FINAL_MESSAGE_STATUSES = frozenset({MessageStatus.delivered, MessageStatus.undelivered, MessageStatus.failed})

# Rank used so that status updates never move a message backwards.
MESSAGE_STATUS_RANK = {
    MessageStatus.pending: 0,
    MessageStatus.sending: 1,
    MessageStatus.sent: 2,
    MessageStatus.delivered: 3,
    MessageStatus.undelivered: 3,
    MessageStatus.failed: 3,
}


class ErrorCode(StrEnum):
    """Our own message error codes (providers' codes are stored as they give them)."""

    outcome_unknown = "outcome_unknown"
    status_timeout = "status_timeout"
    cancelled = "cancelled"
    opted_out = "opted_out"
    no_address = "no_address"
    internal_error = "internal_error"
    retry_window_exceeded = "retry_window_exceeded"


class SenderIdStatus(StrEnum):
    pending = "pending"
    approved = "approved"
    rejected = "rejected"


class CreditKind(StrEnum):
    topup = "topup"
    hold = "hold"
    charge = "charge"
    release = "release"
