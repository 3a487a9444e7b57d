"""WhatsApp Business Cloud API: sending and webhooks.

Sending: ``POST {api_base}/{phone_number_id}/messages`` with a bearer token. Inside the
24-hour customer-service window (the patient wrote to us less than 24 h ago) free text may be
sent; outside it only a pre-approved template (name, language, body parameters). The
idempotency key travels as ``biz_opaque_callback_data``, which Meta echoes in status
webhooks; the Cloud API itself does **not** de-duplicate, so a retry after a time-out can
deliver twice (the fake can be told to behave either way).

Webhooks: one callback URL receives both statuses (sent, delivered, read, failed) and
messages, signed with ``X-Hub-Signature-256`` (HMAC-SHA256 of the raw body with the app
secret). The set-up handshake is :meth:`WhatsAppChannel.verify_subscription`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

import httpx

from channels._http import API_BASE, DEFAULT_TIMEOUT, by_http_status, from_unix, json_or_empty
from channels._http import post_once, redact
from channels._http import retry_after_seconds
from channels._signing import same, sha256_signature
from channels.base import (
    DeliveryStatus,
    InboundReply,
    OutboundMessage,
    SendResult,
    StatusUpdate,
    WebhookRequest,
)
from channels.errors import SignatureError, WebhookPayloadError, check_settings

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Hub-Signature-256"
CUSTOMER_SERVICE_WINDOW = timedelta(hours=24)

STATUS_MAP: dict[str, DeliveryStatus] = {
    "sent": DeliveryStatus.SENT,
    "delivered": DeliveryStatus.DELIVERED,
    "read": DeliveryStatus.READ,
    "failed": DeliveryStatus.FAILED,
}

# Cloud API error codes: throttling and transient platform errors are retryable.
RETRYABLE_CODES = frozenset({"1", "2", "4", "80007", "130429", "131000", "131016", "131056",
                             "133004"})
RE_ENGAGEMENT_REQUIRED = "131047"
TEMPLATE_REQUIRED = "template_required"


def is_window_open(last_inbound_at: datetime | None, now: datetime) -> bool:
    """True when the patient's last message is less than 24 hours old.

    >>> t = datetime(2025, 3, 1, 9, tzinfo=timezone.utc)
    >>> is_window_open(t, t + timedelta(hours=23)), is_window_open(t, t + timedelta(hours=24))
    (True, False)
    >>> is_window_open(None, t)
    False
    """
    return last_inbound_at is not None and now - last_inbound_at < CUSTOMER_SERVICE_WINDOW


def build_payload(message: OutboundMessage, *, window_open: bool) -> dict[str, Any] | None:
    """The JSON body for one send, or None when nothing may be sent (window closed and no
    template). Free text inside the window, the template outside it."""
    base: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": message.to.lstrip("+"),
        "biz_opaque_callback_data": message.idempotency_key,
    }
    if window_open:
        return base | {"type": "text", "text": {"body": message.body, "preview_url": False}}
    if not message.template:
        return None
    template: dict[str, Any] = {
        "name": message.template,
        "language": {"code": message.language or "it"},
    }
    if message.template_params:
        template["components"] = [
            {
                "type": "body",
                "parameters": [{"type": "text", "text": p} for p in message.template_params],
            }
        ]
    return base | {"type": "template", "template": template}


class WhatsAppChannel:
    """WhatsApp through a Cloud-API-compatible endpoint."""

    name: ClassVar[str] = "whatsapp"

    def __init__(
        self,
        *,
        api_base: str,
        phone_number_id: str,
        access_token: str,
        app_secret: str,
        verify_token: str,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self._url = f"{api_base.rstrip('/')}/{phone_number_id}/messages"
        self._token = access_token
        self._app_secret = app_secret
        self._verify_token = verify_token
        self._client = client or httpx.AsyncClient(timeout=DEFAULT_TIMEOUT)
        self._clock = clock

    @classmethod
    def from_settings(
        cls,
        settings: Any,
        *,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> WhatsAppChannel:
        values = {
            "whatsapp_phone_number_id": settings.whatsapp_phone_number_id,
            "whatsapp_token": settings.whatsapp_token.get_secret_value(),
            "whatsapp_app_secret": settings.whatsapp_app_secret.get_secret_value(),
            "whatsapp_verify_token": settings.whatsapp_verify_token.get_secret_value(),
        }
        check_settings(
            {"whatsapp_api_base": settings.whatsapp_api_base, **values},
            {"whatsapp_api_base": API_BASE, "whatsapp_phone_number_id": (r"\d+", "a WhatsApp phone number id (digits)")},
        )
        extra = {"clock": clock} if clock else {}
        return cls(
            api_base=settings.whatsapp_api_base,
            phone_number_id=values["whatsapp_phone_number_id"],
            access_token=values["whatsapp_token"],
            app_secret=values["whatsapp_app_secret"],
            verify_token=values["whatsapp_verify_token"],
            client=client,
            **extra,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(self, message: OutboundMessage, *, window_open: bool | None = None) -> SendResult:
        """One POST to /messages. ``window_open`` overrides the window computed from
        ``message.last_inbound_at``. Outside the window without a template the result is
        final with code ``template_required`` and nothing is sent."""
        if window_open is None:
            window_open = is_window_open(message.last_inbound_at, self._clock())
        payload = build_payload(message, window_open=window_open)
        if payload is None:
            return SendResult.fail(
                TEMPLATE_REQUIRED, "outside the 24-hour window and no approved template given"
            )

        def interpret(response: httpx.Response) -> SendResult:
            data = json_or_empty(response)
            messages = data.get("messages") or []
            if response.is_success and messages and messages[0].get("id"):
                return SendResult.ok(str(messages[0]["id"]))
            error = data.get("error") or {}
            code = str(error.get("code") or response.status_code)
            text = redact(str(error.get("message") or response.reason_phrase))
            retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            if code in RETRYABLE_CODES:
                return SendResult.retry(code, text, retry_after)
            if code == RE_ENGAGEMENT_REQUIRED:
                return SendResult.fail(code, text)
            return by_http_status(response.status_code, code, text, retry_after)

        return await post_once(
            self._client,
            self._url,
            interpret,
            json=payload,
            headers={"Authorization": f"Bearer {self._token}"},
        )

    def verify_subscription(self, query: Mapping[str, str]) -> str:
        """The webhook set-up handshake: return ``hub.challenge`` (answer it as the plain
        text body, HTTP 200) when ``hub.mode`` is subscribe and ``hub.verify_token`` matches;
        raise :class:`SignatureError` (403) otherwise."""
        if query.get("hub.mode") != "subscribe" or not same(
            self._verify_token, query.get("hub.verify_token")
        ):
            raise SignatureError("webhook verify token does not match")
        challenge = query.get("hub.challenge")
        if challenge is None:
            raise WebhookPayloadError("subscription handshake without hub.challenge")
        return challenge

    def verify(self, request: WebhookRequest) -> dict[str, Any]:
        """Check X-Hub-Signature-256 over the raw body; return the parsed JSON."""
        if not same(sha256_signature(request.body, self._app_secret),
                    request.header(SIGNATURE_HEADER)):
            log.warning("whatsapp webhook rejected: bad or missing signature")
            raise SignatureError("X-Hub-Signature-256 does not match")
        data = request.json()
        if not isinstance(data, dict):
            raise WebhookPayloadError("whatsapp webhook body is not an object")
        return data

    def parse_status(self, request: WebhookRequest) -> list[StatusUpdate]:
        """Every ``statuses[]`` entry in the notification; unknown statuses are skipped."""
        updates = []
        for value in _values(self.verify(request)):
            for item in value.get("statuses") or []:
                status = STATUS_MAP.get(str(item.get("status", "")).lower())
                if status is None or not item.get("id"):
                    continue
                errors = item.get("errors") or [{}]
                failed = status is DeliveryStatus.FAILED
                updates.append(
                    StatusUpdate(
                        provider_message_id=str(item["id"]),
                        status=status,
                        at=from_unix(item.get("timestamp")),
                        error_code=str(errors[0].get("code")) if failed and errors[0] else None,
                        error_text=(
                            redact(str(errors[0].get("title") or errors[0].get("message") or ""))
                            if failed and errors[0] else None
                        ),
                    )
                )
        return updates

    def parse_inbound(self, request: WebhookRequest) -> list[InboundReply]:
        """Every ``messages[]`` entry: text, quick-reply button or interactive reply text;
        other types (media, location) arrive with empty text, for the operator queue."""
        replies = []
        for value in _values(self.verify(request)):
            for item in value.get("messages") or []:
                if not item.get("id") or not item.get("from"):
                    raise WebhookPayloadError("whatsapp message without id/from")
                replies.append(
                    InboundReply(
                        provider=self.name,
                        from_address="+" + str(item["from"]).lstrip("+"),
                        text=_text_of(item),
                        provider_message_id=str(item["id"]),
                        received_at=from_unix(item.get("timestamp")),
                    )
                )
        return replies


def _values(data: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        return [
            change.get("value") or {}
            for entry in data.get("entry") or []
            for change in entry.get("changes") or []
        ]
    except AttributeError as exc:
        raise WebhookPayloadError("whatsapp webhook is not a notification") from exc


def _text_of(item: dict[str, Any]) -> str:
    kind = item.get("type")
    if kind == "text":
        return str((item.get("text") or {}).get("body", ""))
    if kind == "button":
        return str((item.get("button") or {}).get("text", ""))
    if kind == "interactive":
        interactive = item.get("interactive") or {}
        reply = interactive.get("button_reply") or interactive.get("list_reply") or {}
        return str(reply.get("title", ""))
    return ""

