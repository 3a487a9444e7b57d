"""The sandbox channel: every message goes to an injected sink (the core's outbox table)
and is always accepted. Its webhooks take plain JSON signed with ``X-Sandbox-Signature:
sha256=<hex>`` (HMAC-SHA256 of the raw body with a shared secret), so the same
verify-then-parse path as the real providers can be exercised by hand or by tests.

Status body::

    {"statuses": [{"message_id": "...", "status": "delivered", "at": "2025-03-01T09:00:00Z",
                   "error_code": null}]}

Inbound body::

    {"messages": [{"message_id": "...", "from": "+393331234567", "text": "1",
                   "received_at": "2025-03-01T09:00:00Z"}]}
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, ClassVar

from channels._signing import same, sha256_signature
from channels.base import (
    DeliveryStatus,
    InboundReply,
    OutboundMessage,
    SendResult,
    StatusUpdate,
    WebhookRequest,
)
from channels.errors import ChannelConfigError, SignatureError, WebhookPayloadError

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Sandbox-Signature"
LOCAL_DEVELOPMENT_SECRET = "sandbox-local-development-secret"

Sink = Callable[[OutboundMessage], Awaitable[str]]


def sign(body: bytes, secret: str) -> str:
    """The X-Sandbox-Signature value for ``body``."""
    return sha256_signature(body, secret)


class SandboxChannel:
    """Records instead of sending. ``record`` returns the id the message is stored under."""

    name: ClassVar[str] = "sandbox"

    def __init__(self, *, record: Sink, webhook_secret: str) -> None:
        if not webhook_secret:
            raise ChannelConfigError({"sandbox_webhook_secret": "required"})
        self._record = record
        self._secret = webhook_secret

    @classmethod
    def from_settings(cls, settings: Any, *, record: Sink) -> SandboxChannel:
        """The secret is ``sandbox_webhook_secret``; without it, local and test environments
        use a fixed development secret and any other environment refuses to start."""
        secret = getattr(settings, "sandbox_webhook_secret", None)
        if secret is not None and hasattr(secret, "get_secret_value"):
            secret = secret.get_secret_value()
        if not secret:
            if getattr(settings, "environment", "local") not in ("local", "test"):
                raise ChannelConfigError({"sandbox_webhook_secret": "required outside the local and test environments"})
            secret = LOCAL_DEVELOPMENT_SECRET
        return cls(record=record, webhook_secret=secret)

    async def send(self, message: OutboundMessage) -> SendResult:
        """Record and accept. A sink that raises gives a retryable result, never an
        exception, like any provider outage."""
        try:
            stored_id = await self._record(message)
        except Exception as exc:  # the sink is the core's storage: any failure is transient
            return SendResult.retry("sink", type(exc).__name__)
        return SendResult.ok(stored_id)

    def verify(self, request: WebhookRequest) -> dict[str, Any]:
        if not same(sign(request.body, self._secret), request.header(SIGNATURE_HEADER)):
            log.warning("sandbox webhook rejected: bad or missing signature")
            raise SignatureError("X-Sandbox-Signature does not match")
        data = request.json()
        if not isinstance(data, dict):
            raise WebhookPayloadError("sandbox webhook body is not an object")
        return data

    def parse_status(self, request: WebhookRequest) -> list[StatusUpdate]:
        updates = []
        for item in _items(self.verify(request), "statuses"):
            try:
                status = DeliveryStatus(str(item["status"]).lower())
                updates.append(
                    StatusUpdate(
                        provider_message_id=str(item["message_id"]),
                        status=status,
                        at=_iso(item.get("at")),
                        error_code=item.get("error_code"),
                        error_text=item.get("error_text"),
                    )
                )
            except (KeyError, ValueError) as exc:
                raise WebhookPayloadError("sandbox status needs message_id and a status") from exc
        return updates

    def parse_inbound(self, request: WebhookRequest) -> list[InboundReply]:
        replies = []
        for item in _items(self.verify(request), "messages"):
            try:
                replies.append(
                    InboundReply(
                        provider=self.name,
                        from_address=str(item["from"]),
                        text=str(item.get("text", "")),
                        provider_message_id=str(item["message_id"]),
                        received_at=_iso(item.get("received_at")),
                    )
                )
            except KeyError as exc:
                raise WebhookPayloadError("sandbox message needs message_id and from") from exc
        return replies


def _items(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    items = data.get(key)
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise WebhookPayloadError(f"sandbox webhook needs a list under {key!r}")
    return items


def _iso(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError as exc:
        raise WebhookPayloadError("sandbox timestamp is not ISO 8601") from exc
