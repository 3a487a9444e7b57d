"""The one small channel interface and the values that cross it.

Every provider module (``twilio``, ``whatsapp``, ``telegram``, ``email``, ``sandbox``)
implements :class:`Channel`. A channel makes *one attempt* per :meth:`Channel.send` and
says what happened; the dispatcher alone decides retries, throttling and failover.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, ClassVar, Protocol, runtime_checkable
from urllib.parse import parse_qsl

from channels.errors import WebhookPayloadError


@dataclass(frozen=True)
class OutboundMessage:
    """One message to one patient address.

    ``to`` is an E.164 number (SMS, WhatsApp), a chat id (Telegram) or an e-mail address.
    The same ``idempotency_key`` never delivers twice where the provider supports it
    (Twilio's idempotency token; the e-mail Message-ID); the dispatcher reuses it on retries.

    ``template`` and ``template_params`` name a pre-approved WhatsApp template and its body
    parameters, used outside the 24-hour customer-service window; ``last_inbound_at`` is
    when the patient last wrote to us on this channel (the window's start).
    """

    to: str
    body: str
    idempotency_key: str
    subject: str | None = None
    html_body: str | None = None
    language: str | None = None
    template: str | None = None
    template_params: tuple[str, ...] = ()
    last_inbound_at: datetime | None = None
    urgent: bool = False

    def __repr__(self) -> str:  # keeps addresses and text out of logs and tracebacks
        return f"OutboundMessage(idempotency_key={self.idempotency_key!r}, urgent={self.urgent})"


class Outcome(StrEnum):
    """What one send attempt came to."""

    ACCEPTED = "accepted"  # the provider took it; delivery is reported by status webhooks
    RETRYABLE = "retryable"  # time-out, 429, 5xx: try again later, same idempotency key
    FINAL = "final"  # invalid number, blocked, other 4xx: fail over to the next channel
    # The provider refused our account (credentials expired or wrong, 401, SMTP 535):
    # nothing about this patient, and every send on the channel meets it until an
    # operator fixes the settings. The dispatcher waits, counting no attempt.
    REFUSED_ACCOUNT = "refused_account"


@dataclass(frozen=True)
class SendResult:
    """The outcome of one attempt. ``error_text`` never contains personal data.

    ``retry_after_s`` is the provider's own hint (Retry-After, Telegram's ``retry_after``);
    ``segments`` and ``cost`` are filled in for SMS.
    """

    outcome: Outcome
    provider_message_id: str | None = None
    error_code: str | None = None
    error_text: str | None = None
    retry_after_s: float | None = None
    segments: int | None = None
    cost: Decimal | None = None

    @property
    def accepted(self) -> bool:
        return self.outcome is Outcome.ACCEPTED

    @classmethod
    def ok(cls, provider_message_id: str, **extra: Any) -> SendResult:
        return cls(Outcome.ACCEPTED, provider_message_id=provider_message_id, **extra)

    @classmethod
    def retry(cls, code: str, text: str, retry_after_s: float | None = None) -> SendResult:
        return cls(Outcome.RETRYABLE, error_code=code, error_text=text, retry_after_s=retry_after_s)

    @classmethod
    def fail(cls, code: str, text: str) -> SendResult:
        return cls(Outcome.FINAL, error_code=code, error_text=text)

    @classmethod
    def refused_account(cls, code: str, text: str) -> SendResult:
        return cls(Outcome.REFUSED_ACCOUNT, error_code=code, error_text=text)


@dataclass(frozen=True)
class WebhookRequest:
    """A provider's HTTP call to our webhook, exactly as received.

    ``url`` must be the URL the provider called (scheme, host, port, path and query as the
    provider saw them, e.g. built from ``public_base_url`` behind a proxy): Twilio signs it.
    Header names are matched case-insensitively.
    """

    method: str
    url: str
    headers: Mapping[str, str]
    query: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None

    def form(self) -> list[tuple[str, str]]:
        """The body as ``application/x-www-form-urlencoded`` pairs, in order."""
        try:
            return parse_qsl(self.body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError as exc:
            raise WebhookPayloadError("form body is not UTF-8") from exc

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise WebhookPayloadError("body is not valid JSON") from exc


class DeliveryStatus(StrEnum):
    """Where a sent message is, as far as the provider knows. Ordered: never go backwards,
    except that ``failed`` may follow ``sent`` (and the core decides what wins)."""

    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"


@dataclass(frozen=True)
class StatusUpdate:
    """One delivery-status callback. ``at`` is the provider's time when it gives one,
    else ``None`` (the core uses the time of receipt). ``error_code`` only for failures."""

    provider_message_id: str
    status: DeliveryStatus
    at: datetime | None = None
    error_code: str | None = None
    error_text: str | None = None


@dataclass(frozen=True)
class InboundReply:
    """A patient's message to us. ``from_address`` is the sender as the provider names it
    (E.164 for SMS/WhatsApp, the Telegram user id); ``chat_id`` is set for Telegram."""

    provider: str
    from_address: str
    text: str
    provider_message_id: str
    received_at: datetime | None = None
    chat_id: str | None = None

    def __repr__(self) -> str:  # keeps addresses and text out of logs and tracebacks
        return (
            f"InboundReply(provider={self.provider!r}, "
            f"provider_message_id={self.provider_message_id!r})"
        )


@runtime_checkable
class Channel(Protocol):
    """One provider. Implementations are cheap to call concurrently."""

    name: ClassVar[str]

    async def send(self, message: OutboundMessage) -> SendResult:
        """One attempt. SendResult says accepted, retryable failure or final failure;
        provider and transport errors never escape as exceptions."""
        ...

    def parse_status(self, request: WebhookRequest) -> list[StatusUpdate]:
        """Verify the provider's signature (else :class:`SignatureError`), then translate
        its callback. States we do not track (queued, accepted) give no update."""
        ...

    def parse_inbound(self, request: WebhookRequest) -> list[InboundReply]:
        """Verify (else :class:`SignatureError`), then translate a patient's reply."""
        ...
