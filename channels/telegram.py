"""Telegram Bot API: sending, webhooks and linking a patient's chat by deep link.

Sending: ``POST {api_base}/bot{token}/sendMessage`` with ``chat_id`` and ``text``. The Bot
API has no idempotency key and no delivery receipts: a retry after a time-out may deliver
twice, and :meth:`TelegramChannel.parse_status` only verifies the call.

Webhooks carry ``X-Telegram-Bot-Api-Secret-Token``, which must equal the secret given to
``setWebhook``.

Linking: the core mints a one-time token (:func:`mint_link_token`), stores its digest, and
shows the patient :func:`deep_link`. Telegram opens the bot; the patient presses Start and
the bot receives ``/start <token>``, which :func:`parse_link_request` turns into a
:class:`LinkRequest`. The payload is at most 64 characters of ``[A-Za-z0-9_-]``
(https://core.telegram.org/bots/features#deep-linking).
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar

import httpx

from channels._http import API_BASE, DEFAULT_TIMEOUT, by_http_status, from_unix, json_or_empty
from channels._http import post_once, redact
from channels._signing import same
from channels.base import InboundReply, OutboundMessage, SendResult, StatusUpdate, WebhookRequest
from channels.errors import ChannelConfigError, LinkTokenError, SignatureError, WebhookPayloadError, check_settings

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
# Ignored by Telegram; lets a fake Bot API count deliveries per idempotency key.
IDEMPOTENCY_HEADER = "X-Idempotency-Key"
LINK_TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
DEFAULT_LINK_TTL = timedelta(minutes=30)
_START = re.compile(r"^/start(?:@\w+)?(?:\s+(?P<payload>\S+))?\s*$")


@dataclass(frozen=True)
class LinkToken:
    """A freshly minted deep-link token. Store ``digest`` (never the token), the patient,
    ``expires_at`` and, once used, when; give ``token`` only to the patient."""

    token: str
    expires_at: datetime
    digest: str


@dataclass(frozen=True)
class LinkRequest:
    """A patient pressed Start on a deep link: link ``chat_id`` to whoever owns the token."""

    token: str
    digest: str
    chat_id: str
    user_id: str
    received_at: datetime | None

    def __repr__(self) -> str:
        return "LinkRequest(…)"


def link_token_digest(token: str) -> str:
    """SHA-256 hex of the token: what the core stores and looks up."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def mint_link_token(now: datetime, ttl: timedelta = DEFAULT_LINK_TTL) -> LinkToken:
    """A new unguessable token (256 bits, 43 characters of ``[A-Za-z0-9_-]``) valid until
    ``now + ttl``."""
    token = secrets.token_urlsafe(32)
    return LinkToken(token=token, expires_at=now + ttl, digest=link_token_digest(token))


def deep_link(bot_name: str, token: str) -> str:
    """``https://t.me/<bot>?start=<token>``.

    >>> deep_link("SanLucaBot", "abc_DEF-123")
    'https://t.me/SanLucaBot?start=abc_DEF-123'
    """
    if not LINK_TOKEN_PATTERN.fullmatch(token):
        raise LinkTokenError("deep-link token must be 1-64 characters of [A-Za-z0-9_-]")
    return f"https://t.me/{bot_name.lstrip('@')}?start={token}"


def link_token_usable(expires_at: datetime, used_at: datetime | None, now: datetime) -> bool:
    """A stored token links a chat only once and only before it expires."""
    return used_at is None and now < expires_at


def parse_link_request(reply: InboundReply) -> LinkRequest | None:
    """``/start <token>`` → LinkRequest; any other text → None. A ``/start`` whose payload
    is not a well-formed token raises :class:`LinkTokenError`; a bare ``/start`` (the
    patient opened the bot without a link) is None."""
    match = _START.match(reply.text.strip())
    if match is None or match.group("payload") is None:
        return None
    token = match.group("payload")
    if not LINK_TOKEN_PATTERN.fullmatch(token):
        raise LinkTokenError("deep-link payload is not a valid token")
    return LinkRequest(
        token=token,
        digest=link_token_digest(token),
        chat_id=reply.chat_id or reply.from_address,
        user_id=reply.from_address,
        received_at=reply.received_at,
    )


class TelegramChannel:
    """A Telegram bot through a Bot-API-compatible endpoint."""

    name: ClassVar[str] = "telegram"

    def __init__(
        self,
        *,
        api_base: str,
        bot_token: str,
        secret_token: str,
        bot_name: str = "",
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not secret_token:
            raise ChannelConfigError({"telegram_secret_token": "required"})
        self._url = f"{api_base.rstrip('/')}/bot{bot_token}/sendMessage"
        self._secret = secret_token
        self.bot_name = bot_name
        self._client = client or httpx.AsyncClient(timeout=DEFAULT_TIMEOUT)

    @classmethod
    def from_settings(
        cls, settings: Any, *, client: httpx.AsyncClient | None = None
    ) -> TelegramChannel:
        values = {
            "telegram_bot_token": settings.telegram_bot_token.get_secret_value(),
            "telegram_secret_token": settings.telegram_secret_token.get_secret_value(),
            "telegram_bot_name": settings.telegram_bot_name,
        }
        check_settings(
            {"telegram_api_base": settings.telegram_api_base, **values},
            {"telegram_api_base": API_BASE, "telegram_bot_token": (
                r"\d+:[A-Za-z0-9_-]+", "a Telegram bot token (the bot's number, a colon, letters, digits, _ and -)")},
        )
        return cls(
            api_base=settings.telegram_api_base,
            bot_token=values["telegram_bot_token"],
            secret_token=values["telegram_secret_token"],
            bot_name=values["telegram_bot_name"],
            client=client,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(self, message: OutboundMessage) -> SendResult:
        """One sendMessage to ``message.to`` (a chat id). The provider message id is
        ``<chat_id>:<message_id>`` because Telegram numbers messages per chat. 403 (the
        patient blocked the bot) and 400 (chat not found) are final."""

        def interpret(response: httpx.Response) -> SendResult:
            data = json_or_empty(response)
            result = data.get("result") or {}
            if response.is_success and data.get("ok") and "message_id" in result:
                chat = (result.get("chat") or {}).get("id", message.to)
                return SendResult.ok(f"{chat}:{result['message_id']}")
            code = str(data.get("error_code") or response.status_code)
            text = redact(str(data.get("description") or response.reason_phrase))
            retry_after = (data.get("parameters") or {}).get("retry_after")
            return by_http_status(
                response.status_code, code, text,
                float(retry_after) if retry_after is not None else None,
            )

        return await post_once(
            self._client,
            self._url,
            interpret,
            json={"chat_id": message.to, "text": message.body},
            headers={IDEMPOTENCY_HEADER: message.idempotency_key},
        )

    def verify(self, request: WebhookRequest) -> dict[str, Any]:
        """Check the secret-token header; return the Update object."""
        if not same(self._secret, request.header(SECRET_HEADER)):
            log.warning("telegram webhook rejected: bad or missing secret token")
            raise SignatureError("X-Telegram-Bot-Api-Secret-Token does not match")
        update = request.json()
        if not isinstance(update, dict):
            raise WebhookPayloadError("telegram update is not an object")
        return update

    def parse_status(self, request: WebhookRequest) -> list[StatusUpdate]:
        """Telegram sends no delivery receipts: verify, then nothing to report."""
        self.verify(request)
        return []

    def parse_inbound(self, request: WebhookRequest) -> list[InboundReply]:
        """A ``message`` (its text) or a ``callback_query`` (an inline button's data).
        Other update kinds give nothing."""
        update = self.verify(request)
        if isinstance(update.get("message"), dict):
            msg = update["message"]
            chat = (msg.get("chat") or {}).get("id")
            sender = (msg.get("from") or {}).get("id", chat)
            if chat is None or "message_id" not in msg:
                raise WebhookPayloadError("telegram message without chat/message_id")
            return [
                InboundReply(
                    provider=self.name,
                    from_address=str(sender),
                    text=str(msg.get("text") or msg.get("caption") or ""),
                    provider_message_id=f"{chat}:{msg['message_id']}",
                    received_at=from_unix(msg.get("date")),
                    chat_id=str(chat),
                )
            ]
        if isinstance(update.get("callback_query"), dict):
            query = update["callback_query"]
            chat = ((query.get("message") or {}).get("chat") or {}).get("id")
            sender = (query.get("from") or {}).get("id")
            if sender is None or "id" not in query:
                raise WebhookPayloadError("telegram callback query without id/from")
            return [
                InboundReply(
                    provider=self.name,
                    from_address=str(sender),
                    text=str(query.get("data") or ""),
                    provider_message_id=f"callback:{query['id']}",
                    received_at=None,
                    chat_id=str(chat if chat is not None else sender),
                )
            ]
        return []

