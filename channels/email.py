"""E-mail over SMTP with STARTTLS (RFC 3207), a plain-text part and an optional HTML part
(``multipart/alternative``, RFC 2046 §5.1.4).

The Message-ID is derived from the idempotency key, so a retried send carries the same
Message-ID (and the fake SMTP server counts deliveries by it). SMTP itself does not
de-duplicate: a retry after a lost reply may deliver twice; mail clients usually fold
messages with the same Message-ID. There are no status or inbound webhooks for e-mail.

Blocking :mod:`smtplib` runs in a worker thread, one connection per send.
"""

from __future__ import annotations

import asyncio
import hashlib
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any, ClassVar

from channels._http import redact
from channels.base import InboundReply, OutboundMessage, SendResult, StatusUpdate, WebhookRequest
from channels.errors import check_settings


def message_id_for(idempotency_key: str, sender: str) -> str:
    """``<hash@domain>``: stable for a key, revealing nothing about it.

    >>> message_id_for("n-1", "noreply@clinic.example")
    '<51aeea8ffa05d2620d35c87463465885@clinic.example>'
    """
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
    domain = sender.rpartition("@")[2] or "localhost"
    return f"<{digest}@{domain}>"


def build_email(message: OutboundMessage, sender: str) -> EmailMessage:
    """The MIME message: text part, HTML alternative when given, Message-ID from the key."""
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = message.to
    mail["Subject"] = message.subject or ""
    mail["Date"] = formatdate(localtime=False, usegmt=True)
    mail["Message-ID"] = message_id_for(message.idempotency_key, sender)
    mail.set_content(message.body)
    if message.html_body:
        mail.add_alternative(message.html_body, subtype="html")
    if message.language:  # after the content: setting it clears every Content-* header
        mail["Content-Language"] = message.language
    return mail


class EmailChannel:
    """SMTP submission. ``tls_context`` defaults to the system trust store; tests pass one
    that trusts the fake server's self-signed certificate."""

    name: ClassVar[str] = "email"

    def __init__(
        self,
        *,
        host: str,
        port: int,
        sender: str,
        username: str = "",
        password: str = "",
        starttls: bool = True,
        tls_context: ssl.SSLContext | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self._host, self._port = host, port
        self._sender = sender
        self._username, self._password = username, password
        self._starttls = starttls
        self._tls_context = tls_context or ssl.create_default_context()
        self._timeout_s = timeout_s

    @classmethod
    def from_settings(cls, settings: Any, *, tls_context: ssl.SSLContext | None = None) -> EmailChannel:
        check_settings({"smtp_host": settings.smtp_host, "smtp_from": settings.smtp_from},
                       {"smtp_from": (r"[^@\s]+@[^@\s]+", "an e-mail address")})
        return cls(
            host=settings.smtp_host,
            port=settings.smtp_port,
            sender=settings.smtp_from,
            username=settings.smtp_username,
            password=settings.smtp_password.get_secret_value(),
            starttls=settings.smtp_starttls,
            tls_context=tls_context,
        )

    async def send(self, message: OutboundMessage) -> SendResult:
        """One SMTP transaction. 4xx replies, time-outs and dropped connections are
        retryable; 5xx replies (unknown mailbox, rejected) are final. The provider message
        id is the Message-ID."""
        mail = build_email(message, self._sender)
        try:
            await asyncio.to_thread(self._deliver, mail)
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = next(iter(exc.recipients.values()))
            return _by_smtp_code(code, reply)
        except smtplib.SMTPResponseException as exc:
            return _by_smtp_code(exc.smtp_code, exc.smtp_error)
        except smtplib.SMTPNotSupportedError:
            return SendResult.fail("starttls_unsupported", "server offers no STARTTLS")
        except smtplib.SMTPServerDisconnected as exc:
            return SendResult.retry("disconnected", type(exc).__name__)
        except TimeoutError as exc:
            return SendResult.retry("timeout", type(exc).__name__)
        except (smtplib.SMTPException, OSError) as exc:
            return SendResult.retry("transport", type(exc).__name__)
        return SendResult.ok(str(mail["Message-ID"]))

    def _deliver(self, mail: EmailMessage) -> None:
        with smtplib.SMTP(self._host, self._port, timeout=self._timeout_s) as smtp:
            smtp.ehlo()
            if self._starttls:
                smtp.starttls(context=self._tls_context)
                smtp.ehlo()
            if self._username:
                smtp.login(self._username, self._password)
            smtp.send_message(mail)

    def parse_status(self, request: WebhookRequest) -> list[StatusUpdate]:
        """E-mail has no status webhooks; bounces are out of scope."""
        return []

    def parse_inbound(self, request: WebhookRequest) -> list[InboundReply]:
        """E-mail has no inbound webhook."""
        return []


def _by_smtp_code(code: int, reply: bytes | str) -> SendResult:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    if 400 <= code < 500:
        return SendResult.retry(str(code), redact(text))
    if code in _ACCOUNT_REFUSED:
        return SendResult.refused_account(str(code), redact(text))
    return SendResult.fail(str(code), redact(text))


# RFC 4954 §6: authentication required, mechanism too weak, credentials invalid.
_ACCOUNT_REFUSED = frozenset({530, 534, 535})
