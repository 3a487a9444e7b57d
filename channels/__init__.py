"""Messaging channels: one module per provider behind one small interface.

The public surface is re-exported here; provider classes live in their own modules
(``channels.twilio``, ``channels.whatsapp``, ``channels.telegram``, ``channels.email``,
``channels.sandbox``) and fake providers for tests in ``channels.fakes``.
"""

from channels.base import (
    Channel,
    DeliveryStatus,
    InboundReply,
    OutboundMessage,
    Outcome,
    SendResult,
    StatusUpdate,
    WebhookRequest,
)
from channels.errors import (
    ChannelConfigError,
    ChannelError,
    LinkTokenError,
    SignatureError,
    WebhookPayloadError,
)

__all__ = [
    "Channel",
    "ChannelConfigError",
    "ChannelError",
    "DeliveryStatus",
    "InboundReply",
    "LinkTokenError",
    "OutboundMessage",
    "Outcome",
    "SendResult",
    "SignatureError",
    "StatusUpdate",
    "WebhookPayloadError",
    "WebhookRequest",
]
