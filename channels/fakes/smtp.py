"""A fake SMTP submission server (aiosmtpd) that requires STARTTLS, with a self-signed
certificate generated on the fly, per-Message-ID delivery counts and error modes."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
import ssl
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class SelfSignedCertificate:
    cert_pem: bytes
    key_pem: bytes

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
            cert.write_bytes(self.cert_pem)
            key.write_bytes(self.key_pem)
            context.load_cert_chain(cert, key)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this certificate (and only it)."""
        return ssl.create_default_context(cadata=self.cert_pem.decode("ascii"))


def self_signed_certificate(hostname: str = "localhost") -> SelfSignedCertificate:
    """An EC P-256 certificate for ``hostname`` and 127.0.0.1, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return SelfSignedCertificate(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()),
    )


class _Handler:
    def __init__(self, fake: FakeSmtp) -> None:
        self.fake = fake

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        fault = self.fake._next_fault()
        if fault is not None:
            return f"{fault} 4.3.0 Temporary failure, try again later"
        if address.lower() in self.fake.rejected:
            return "550 5.1.1 Mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        mail = message_from_bytes(envelope.content, policy=policy.default)
        message_id = str(mail.get("Message-ID", ""))
        with self.fake._lock:
            self.fake.messages.append(mail)  # type: ignore[arg-type]
            self.fake.deliveries[message_id] += 1
            slow = self.fake._slow_next
            self.fake._slow_next = False
        if slow:
            await asyncio.sleep(self.fake.slow_s)
        return "250 Message accepted for delivery"


class FakeSmtp:
    """An SMTP server on 127.0.0.1 that requires STARTTLS before MAIL.

    ``deliveries`` counts messages per Message-ID; ``rejected`` addresses get 550 (final);
    ``fail_next("451")`` answers the next RCPT with that 4xx code (retryable); ``slow_next()`` accepts
    the next message but answers only after ``slow_s`` (a client time-out).
    ``client_tls_context()`` trusts the generated certificate.
    """

    def __init__(self, *, rejected: set[str] | None = None, slow_s: float = 2.0) -> None:
        self.certificate = self_signed_certificate()
        self.rejected = {a.lower() for a in (rejected or set())}
        self.slow_s = slow_s
        self.messages: list[EmailMessage] = []
        self.deliveries: Counter[str] = Counter()
        self._forced: list[str] = []
        self._slow_next = False
        self._lock = threading.Lock()
        self._controller: Controller | None = None
        self.host, self.port = "127.0.0.1", 0

    def client_tls_context(self) -> ssl.SSLContext:
        return self.certificate.client_context()

    def fail_next(self, reply_code: str = "451", times: int = 1) -> None:
        with self._lock:
            self._forced.extend([reply_code] * times)

    def slow_next(self) -> None:
        with self._lock:
            self._slow_next = True

    def reset(self) -> None:
        with self._lock:
            self.messages.clear()
            self.deliveries.clear()
            self._forced.clear()
            self._slow_next = False

    def _next_fault(self) -> str | None:
        with self._lock:
            return self._forced.pop(0) if self._forced else None

    def start(self) -> tuple[str, int]:
        self.port = _free_port(self.host)
        self._controller = Controller(
            _Handler(self), hostname=self.host, port=self.port,
            tls_context=self.certificate.server_context(), require_starttls=True,
            ready_timeout=10,
        )
        self._controller.start()
        return self.host, self.port

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> FakeSmtp:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
