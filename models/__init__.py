"""SQLModel tables and API schemas: no I/O, no business rules."""

from models.enums import CampaignStatus, Channel, CreditKind, ErrorCode, MessageStatus, SenderIdStatus
from models.tables import (
    Account,
    ApiKey,
    Campaign,
    ChannelOptOut,
    Contact,
    ContactList,
    CreditEntry,
    IdempotencyRecord,
    ListMembership,
    Message,
    RateBucket,
    SendAttempt,
    SenderId,
    SenderSlot,
    StatusEvent,
)

__all__ = [
    "Account",
    "ApiKey",
    "Campaign",
    "CampaignStatus",
    "Channel",
    "ChannelOptOut",
    "Contact",
    "ContactList",
    "CreditEntry",
    "CreditKind",
    "ErrorCode",
    "IdempotencyRecord",
    "ListMembership",
    "Message",
    "MessageStatus",
    "RateBucket",
    "SendAttempt",
    "SenderId",
    "SenderIdStatus",
    "SenderSlot",
    "StatusEvent",
]
