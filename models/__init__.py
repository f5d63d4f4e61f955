"""SQLModel tables and API schemas: no I/O, no business rules."""

from models.enums import CampaignStatus, Channel, CreditKind, MessageStatus, SenderIdStatus
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
    SenderId,
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
    "IdempotencyRecord",
    "ListMembership",
    "Message",
    "MessageStatus",
    "RateBucket",
    "SenderId",
    "SenderIdStatus",
    "StatusEvent",
]
