"""Twilio-style SMS: the Programmable Messaging REST API and its webhooks.

Sending: ``POST {api_base}/2010-04-01/Accounts/{sid}/Messages.json`` with HTTP basic auth
(account SID, auth token), form fields ``To``, ``From``, ``Body`` and ``StatusCallback``, and
the idempotency key in the ``I-Twilio-Idempotency-Token`` header so that a retried request is
not delivered twice.

Webhooks (status callbacks and inbound messages) are form-encoded POSTs signed with
``X-Twilio-Signature`` (see :func:`channels._signing.twilio_signature`). No callback is sent
for the initial queued/accepted state.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import httpx

from channels._http import API_BASE, DEFAULT_TIMEOUT, by_http_status, json_or_empty, post_once, redact
from channels._http import retry_after_seconds
from channels._signing import same, twilio_signature
from channels.base import (
    DeliveryStatus,
    InboundReply,
    OutboundMessage,
    SendResult,
    StatusUpdate,
    WebhookRequest,
)
from channels.errors import SignatureError, WebhookPayloadError, check_settings
from channels.sms import count_segments, estimate_cost

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Twilio-Signature"
IDEMPOTENCY_HEADER = "I-Twilio-Idempotency-Token"

# Twilio MessageStatus → ours. queued/accepted/sending/scheduled are before "sent": no update.
STATUS_MAP: dict[str, DeliveryStatus] = {
    "sent": DeliveryStatus.SENT,
    "delivered": DeliveryStatus.DELIVERED,
    "read": DeliveryStatus.READ,
    "undelivered": DeliveryStatus.FAILED,
    "failed": DeliveryStatus.FAILED,
    "canceled": DeliveryStatus.FAILED,
}

# Error codes (https://www.twilio.com/docs/api/errors) worth retrying despite a 4xx status.
RETRYABLE_CODES = frozenset({"20429", "14107", "30001", "30022"})
INVALID_NUMBER = "21211"
UNSUBSCRIBED_RECIPIENT = "21610"


class TwilioChannel:
    """SMS through a Twilio-compatible API (the real one, or the fake on 127.0.0.1)."""

    name: ClassVar[str] = "twilio"

    def __init__(
        self,
        *,
        api_base: str,
        account_sid: str,
        auth_token: str,
        from_number: str,
        status_callback_url: str | None = None,
        price_per_segment: Decimal | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._url = f"{api_base.rstrip('/')}/2010-04-01/Accounts/{account_sid}/Messages.json"
        self._account_sid = account_sid
        self._auth_token = auth_token
        self._from = from_number
        self._status_callback_url = status_callback_url
        self._price = price_per_segment
        self._client = client or httpx.AsyncClient(timeout=DEFAULT_TIMEOUT)

    @classmethod
    def from_settings(
        cls, settings: Any, *, client: httpx.AsyncClient | None = None
    ) -> TwilioChannel:
        """Build from ``twilio_*`` settings; the status callback is
        ``{public_base_url}/webhooks/twilio/status``."""
        token = settings.twilio_auth_token.get_secret_value()
        check_settings(
            {"twilio_api_base": settings.twilio_api_base, "twilio_account_sid": settings.twilio_account_sid,
             "twilio_auth_token": token, "twilio_from": settings.twilio_from},
            {"twilio_api_base": API_BASE,
             "twilio_account_sid": (r"AC[0-9a-fA-F]{32}", "a Twilio account SID (AC and 32 hexadecimal digits)")},
        )
        price = getattr(settings, "sms_price_per_segment", None)
        return cls(
            api_base=settings.twilio_api_base,
            account_sid=settings.twilio_account_sid,
            auth_token=token,
            from_number=settings.twilio_from,
            status_callback_url=f"{settings.public_base_url.rstrip('/')}/webhooks/twilio/status",
            price_per_segment=Decimal(str(price)) if price is not None else None,
            client=client,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(self, message: OutboundMessage) -> SendResult:
        """One POST to Messages.json. Segments come from Twilio's ``num_segments`` when
        given, else from our own count; cost is segments × the configured price."""
        data = {"To": message.to, "From": self._from, "Body": message.body}
        if self._status_callback_url:
            data["StatusCallback"] = self._status_callback_url
        counted = count_segments(message.body).segments

        def interpret(response: httpx.Response) -> SendResult:
            payload = json_or_empty(response)
            if response.status_code in (200, 201) and payload.get("sid"):
                segments = _int_or(payload.get("num_segments"), counted)
                cost = self._price * segments if self._price is not None else None
                return SendResult.ok(str(payload["sid"]), segments=segments, cost=cost)
            code = str(payload.get("code") or response.status_code)
            text = redact(str(payload.get("message") or response.reason_phrase))
            if code in RETRYABLE_CODES:
                retry = retry_after_seconds(response.headers.get("Retry-After"))
                return SendResult.retry(code, text, retry)
            return by_http_status(
                response.status_code, code, text,
                retry_after_seconds(response.headers.get("Retry-After")),
            )

        return await post_once(
            self._client,
            self._url,
            interpret,
            data=data,
            auth=(self._account_sid, self._auth_token),
            headers={IDEMPOTENCY_HEADER: message.idempotency_key},
        )

    def estimate_cost(self, body: str) -> Decimal | None:
        """What ``body`` would cost, before sending (None when no price is configured)."""
        return estimate_cost(body, self._price) if self._price is not None else None

    def verify(self, request: WebhookRequest) -> list[tuple[str, str]]:
        """Check X-Twilio-Signature against the URL and form body; return the form pairs."""
        params = request.form()
        given = request.header(SIGNATURE_HEADER)
        for url in _url_variants(request.url):
            if same(twilio_signature(url, params, self._auth_token), given):
                return params
        log.warning("twilio webhook rejected: bad or missing signature")
        raise SignatureError("X-Twilio-Signature does not match")

    def parse_status(self, request: WebhookRequest) -> list[StatusUpdate]:
        """MessageStatus → sent/delivered/read/failed (undelivered and failed are both
        ``failed``, with Twilio's ErrorCode); queued, accepted and sending give nothing."""
        form = dict(self.verify(request))
        sid = form.get("MessageSid") or form.get("SmsSid")
        raw = (form.get("MessageStatus") or form.get("SmsStatus") or "").lower()
        if not sid or not raw:
            raise WebhookPayloadError("twilio status callback without MessageSid/MessageStatus")
        status = STATUS_MAP.get(raw)
        if status is None:
            return []
        error_code = form.get("ErrorCode") or None
        if status is not DeliveryStatus.FAILED:
            error_code = None
        return [
            StatusUpdate(
                provider_message_id=sid,
                status=status,
                at=None,
                error_code=error_code,
                error_text=redact(form["ErrorMessage"]) if form.get("ErrorMessage") else None,
            )
        ]

    def parse_inbound(self, request: WebhookRequest) -> list[InboundReply]:
        """An incoming SMS: From, Body, MessageSid. Twilio gives no timestamp."""
        form = dict(self.verify(request))
        sid = form.get("MessageSid") or form.get("SmsSid")
        sender = form.get("From")
        if not sid or not sender:
            raise WebhookPayloadError("twilio inbound message without MessageSid/From")
        return [
            InboundReply(
                provider=self.name,
                from_address=sender,
                text=form.get("Body", ""),
                provider_message_id=sid,
                received_at=None,
            )
        ]


def _int_or(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _url_variants(url: str) -> list[str]:
    """The URL as given, and with the scheme's default port added or removed: Twilio signs
    what it called, and proxies disagree about showing :443."""
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    variants = [url]
    if default is None or parts.hostname is None:
        return variants
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if parts.port is None:
        variants.append(urlunsplit(parts._replace(netloc=f"{host}:{default}")))
    elif parts.port == default:
        variants.append(urlunsplit(parts._replace(netloc=host)))
    return variants
