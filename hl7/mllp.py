"""MLLP transport: framing and an asyncio server (HL7 v2.5 Appendix C,
"Minimal Lower Layer Protocol" release 2).

A frame is ``START_BLOCK`` + message + ``END_BLOCK`` + ``CARRIAGE_RETURN``.

>>> frame(b"MSH|...")
b'\\x0bMSH|...\\x1c\\r'
>>> FrameDecoder().feed(b"noise\\x0bA\\x1c\\r\\x0bB\\x1c")
[b'A', b'B']
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from hl7.ack import AckCode, AckError, build_ack, build_reject_for_unreadable
from hl7.errors import HL7Error
from hl7.header import read_header

log = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\r"

DEFAULT_MAX_MESSAGE_BYTES = 10 * 1024 * 1024
_BLANK = b" \t\r\n\x00"  # what an empty frame may hold
OVERSIZE_HEAD_BYTES = 4096  # kept from an oversize frame so its MSH can still be read

Handler = Callable[[bytes], Awaitable[bytes]]


def frame(payload: bytes) -> bytes:
    """Wrap one message in an MLLP block."""
    return START_BLOCK + payload + END_BLOCK + CARRIAGE_RETURN


@dataclass(frozen=True)
class Peer:
    """Who is at the other end, as far as the transport can tell: the address, the
    names in the client certificate (mutual TLS: DNS subject alternative names and
    the subject's common name), the API token's name (HTTP). What a facility's
    ``senders`` (config/facilities.yaml) are matched against."""

    address: str = ""
    certificate_names: frozenset[str] = frozenset()
    token: str = ""
    refused: set[str] = field(default_factory=set, compare=False, hash=False)
    """Facilities this connection was refused for, already logged and audited."""

    def describe(self) -> str:
        """For logs and the audit: ``10.20.3.4, TLS client cup.example, token cup``."""
        parts = [self.address or "unknown address"]
        if self.certificate_names:
            parts.append("TLS client " + " ".join(sorted(self.certificate_names)))
        if self.token:
            parts.append(f"token {self.token}")
        return ", ".join(parts)


PEER: ContextVar[Peer | None] = ContextVar("hl7_peer", default=None)
"""The peer of the connection (MLLP) or request (HTTP) whose message is being
handled: each connection is a task of its own, so a handler reads its own peer."""


def peer_of(writer: asyncio.StreamWriter) -> Peer:
    """The :class:`Peer` of an accepted connection."""
    peername = writer.get_extra_info("peername")
    names: set[str] = set()
    ssl_object = writer.get_extra_info("ssl_object")
    certificate = ssl_object.getpeercert() if ssl_object is not None else None
    if certificate:
        names.update(value for kind, value in certificate.get("subjectAltName", ()) if kind == "DNS")
        names.update(value for rdn in certificate.get("subject", ()) for key, value in rdn if key == "commonName")
    return Peer(address=str(peername[0]) if peername else "", certificate_names=frozenset(names))


@dataclass(frozen=True)
class OversizeFrame:
    """A frame longer than the decoder's limit: its first bytes (``head``, for
    reading MSH) and its full ``size``. The rest was discarded as it arrived."""

    head: bytes
    size: int


class FrameDecoder:
    """Incremental MLLP decoder: ``feed`` the bytes of each read and get back
    every frame completed by them, in order.

    - Bytes outside a frame (before a start block, the CR after an end block,
      line noise) are discarded.
    - A start block inside a frame abandons the partial frame and starts anew
      (a sender that gave up mid-message and began again).
    - An end block alone ends a frame; the trailing CR is optional.
    - A frame over ``max_message_bytes`` is reported as ``OversizeFrame`` when it
      ends, so the stream stays in step and the sender gets its AR; memory held
      stays bounded whatever the sender does.
    """

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.max_message_bytes = max_message_bytes
        self._in_frame = False
        self._buffer = bytearray()
        self._size = 0
        self._oversize = False

    @property
    def pending_bytes(self) -> int:
        """Bytes of an unfinished frame received so far."""
        return self._size if self._in_frame else 0

    def feed(self, data: bytes) -> list[bytes | OversizeFrame]:
        out: list[bytes | OversizeFrame] = []
        pos, n = 0, len(data)
        while pos < n:
            if not self._in_frame:
                start = data.find(START_BLOCK, pos)
                if start < 0:
                    break
                self._begin()
                pos = start + 1
                continue
            end = data.find(END_BLOCK, pos)
            stop = end if end >= 0 else n
            restart = data.find(START_BLOCK, pos, stop)
            if restart >= 0:
                self._begin()
                pos = restart + 1
                continue
            self._append(data[pos:stop])
            if end < 0:
                break
            out.append(self._finish())
            pos = end + 1
        return out

    def _begin(self) -> None:
        self._in_frame = True
        self._buffer = bytearray()
        self._size = 0
        self._oversize = False

    def _append(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._oversize:
            return
        if self._size > self.max_message_bytes:
            self._oversize = True
            room = OVERSIZE_HEAD_BYTES - len(self._buffer)
            if room > 0:
                self._buffer += chunk[:room]
            del self._buffer[OVERSIZE_HEAD_BYTES:]
            return
        self._buffer += chunk

    def _finish(self) -> bytes | OversizeFrame:
        self._in_frame = False
        result: bytes | OversizeFrame
        if self._oversize:
            result = OversizeFrame(bytes(self._buffer), self._size)
        else:
            result = bytes(self._buffer)
        self._buffer = bytearray()
        return result


def server_ssl_context(
    cert: str | Path, key: str | Path | None, client_ca: str | Path | None = None
) -> ssl.SSLContext:
    """A TLS ≥ 1.2 server context (``key`` ``None``: the key is in the certificate's
    file); with ``client_ca``, mutual TLS: clients must present a certificate signed
    by that CA."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key) if key else None)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(str(client_ca))
    return ctx


class ServerTLS:
    """The listener's TLS, re-read when its files change: a hospital's certificate
    (or the CA its senders' client certificates come from) is replaced without a
    restart, and without dropping the connections open at the time.

    ``context`` goes to the server. At each handshake its SNI callback (called
    whether or not the sender names a server) compares the files' size and mtime
    with those last loaded, reloads them when they changed, and hands the
    connection the current context. Files that fail to load (written half, a key
    that is not the certificate's) leave the previous certificate in use, with a
    warning, until they load. ``not_after`` is the certificate's expiry, for the
    metrics an operator alerts on."""

    def __init__(self, cert: str | Path, key: str | Path | None, client_ca: str | Path | None = None) -> None:
        self._paths = tuple(Path(p) for p in (cert, key, client_ca) if p)
        self._files = (cert, key, client_ca)
        self._stamp = self._stamps()
        self.current = self.context = server_ssl_context(*self._files)
        self.not_after = certificate_not_after(cert)
        self.context.sni_callback = self._pick
        self._refused_stamp: tuple[tuple[int, int], ...] | None = None

    def _stamps(self) -> tuple[tuple[int, int], ...]:
        stamps = []
        for path in self._paths:
            try:
                st = path.stat()
                stamps.append((st.st_size, st.st_mtime_ns))
            except OSError:
                stamps.append((-1, -1))
        return tuple(stamps)

    def refresh(self) -> None:
        """Reload the files if they changed since they were last loaded."""
        stamp = self._stamps()
        if stamp == self._stamp or stamp == self._refused_stamp:
            return
        try:
            fresh = server_ssl_context(*self._files)
            not_after = certificate_not_after(self._files[0])
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._refused_stamp = stamp
            log.warning("MLLP TLS: the certificate files changed but do not load (%s); the previous certificate "
                        "stays in use", type(exc).__name__)
            return
        self.current, self.not_after, self._stamp = fresh, not_after, stamp
        log.info("MLLP TLS: certificate files reloaded; the certificate expires %s", not_after.isoformat())

    def _pick(self, connection: ssl.SSLObject, _server_name: str | None, _context: ssl.SSLContext) -> None:
        self.refresh()
        if self.current is not self.context:
            connection.context = self.current


def certificate_not_after(cert: str | Path) -> datetime:
    """When the first certificate of a PEM file expires (UTC)."""
    from cryptography import x509

    return x509.load_pem_x509_certificate(Path(cert).read_bytes()).not_valid_after_utc


def expiry_warning(not_after: datetime, now: datetime, *, within_days: int = 30) -> str | None:
    """What to tell the operator about a certificate that expires within ``within_days``
    (or has), else ``None``.

    >>> from datetime import UTC
    >>> expiry_warning(datetime(2026, 12, 10, tzinfo=UTC), datetime(2026, 11, 28, tzinfo=UTC))
    'the MLLP TLS certificate expires on 2026-12-10 (in 12 days): senders will then refuse to connect'
    >>> expiry_warning(datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 28, tzinfo=UTC))
    'the MLLP TLS certificate expired on 2026-11-01: senders refuse to connect'
    """
    if not_after <= now:
        return f"the MLLP TLS certificate expired on {not_after.date().isoformat()}: senders refuse to connect"
    days = (not_after - now).days
    if days >= within_days:
        return None
    return (f"the MLLP TLS certificate expires on {not_after.date().isoformat()} (in {days} days): "
            "senders will then refuse to connect")


def client_ssl_context(
    ca: str | Path | None = None,
    cert: str | Path | None = None,
    key: str | Path | None = None,
) -> ssl.SSLContext:
    """A TLS ≥ 1.2 client context trusting ``ca`` (or the system store) and,
    for mutual TLS, presenting ``cert``/``key``."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx


def answer_for_failure(raw: bytes, exc: BaseException) -> bytes:
    """The ACK for a message whose handling raised: AR for errors that reject
    (``HL7Error.rejects``), AE otherwise, with an ERR saying why; an AR built
    from what can be read when the header itself is unreadable."""
    error = AckError.from_exception(exc)
    try:
        header = read_header(raw)
    except HL7Error as header_exc:
        return build_reject_for_unreadable(raw, header_exc.reason, code=header_exc.code)
    rejects = isinstance(exc, HL7Error) and exc.rejects
    code = AckCode.AR if rejects else AckCode.AE
    if header.enhanced_mode:
        code = AckCode.CR if rejects else AckCode.CE
    return build_ack(header, code, error=error)


class MLLPServer:
    """An asyncio MLLP listener.

    ``handler`` receives one message (bytes, unframed) and returns the ACK bytes
    (unframed) — or ``b""`` to send nothing, for enhanced mode with MSH-15
    ``NE``. Per connection, each message is answered before the next is handed
    to the handler, so order is kept; connections are served concurrently.

    Whatever arrives, every complete frame is answered: an oversize frame with
    AR, an unreadable one with AR, and a handler that raises with AE or AR
    (``answer_for_failure``); only an empty frame (blanks at most), the keep-alive
    some engines send, is not, as its sender reads no ACK for it. Idle connections are closed after
    ``idle_timeout`` seconds, and so is one whose peer takes no ACK bytes for
    as long; beyond ``max_connections`` open at once, or
    ``max_connections_per_address`` from one address (0: no such limit), a new
    connection is closed as soon as it is accepted. ``stop(grace)`` stops accepting, lets connections
    answer the messages already received, closes them, and after ``grace``
    seconds closes whatever is left.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        host: str = "127.0.0.1",
        port: int = 2575,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        idle_timeout: float = 300.0,
        ssl_context: ssl.SSLContext | None = None,
        read_size: int = 64 * 1024,
        max_connections: int = 256,
        max_connections_per_address: int = 0,
    ) -> None:
        self.handler = handler
        self.host = host
        self._port = port
        self.max_message_bytes = max_message_bytes
        self.idle_timeout = idle_timeout
        self.ssl_context = ssl_context
        self.read_size = read_size
        self.max_connections = max_connections
        self.max_connections_per_address = max_connections_per_address
        self._per_address: collections.Counter[str] = collections.Counter()
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], _ConnectionState] = {}
        self._stopping = False

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with ``port=0``)."""
        if self._server is not None and self._server.sockets:
            return int(self._server.sockets[0].getsockname()[1])
        return self._port

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        self._stopping = False
        self._server = await asyncio.start_server(
            self._accept,
            self.host,
            self._port,
            ssl=self.ssl_context,
            ssl_handshake_timeout=10.0 if self.ssl_context else None,
            limit=self.read_size,
        )

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def stop(self, grace: float = 5.0) -> None:
        """Graceful shutdown: stop accepting, finish in-flight messages, close."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for task, state in list(self._connections.items()):
            if not state.busy:
                task.cancel()
        tasks = list(self._connections)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> MLLPServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= self.max_connections:
            # A sender that opens connections without end (a reconnect loop) would
            # otherwise take every file descriptor, the database's and the other
            # hospitals' connections with them. It is closed before it sends anything.
            log.warning("MLLP connection closed at once: %d are open, the limit", len(self._connections))
            writer.close()
            return
        peer = peer_of(writer)
        if self.max_connections_per_address and self._per_address[peer.address] >= self.max_connections_per_address:
            log.warning("MLLP connection from %s closed at once: %d are open from that address, the limit",
                        peer.address, self._per_address[peer.address])
            writer.close()
            return
        state = _ConnectionState()
        self._connections[task] = state
        self._per_address[peer.address] += 1
        PEER.set(peer)  # this connection's task: what its messages' handler reads
        try:
            if self._stopping:
                return
            await self._serve(reader, writer, state)
        except (asyncio.CancelledError, ConnectionError, ssl.SSLError, OSError):
            pass
        except Exception:  # never let one connection take the listener down
            log.exception("MLLP connection failed")
        finally:
            self._connections.pop(task, None)
            self._per_address[peer.address] -= 1
            if not self._per_address[peer.address]:
                del self._per_address[peer.address]
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            except (Exception, asyncio.CancelledError):
                pass

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: _ConnectionState
    ) -> None:
        decoder = FrameDecoder(self.max_message_bytes)
        watchdog = _IdleWatchdog(self.idle_timeout, state)
        try:
            while not self._stopping:
                state.last_read = watchdog.loop.time()
                data = await reader.read(self.read_size)
                if not data:
                    return
                await self._answer_frames(decoder.feed(data), writer, state)
                if state.closed:
                    return
        except asyncio.CancelledError:
            if watchdog.fired:
                watchdog.task.uncancel()
                return  # idle: closed like a connection the peer ended
            raise
        finally:
            watchdog.cancel()

    async def _answer_frames(
        self, frames: list[bytes | OversizeFrame], writer: asyncio.StreamWriter, state: _ConnectionState
    ) -> None:
        if not frames:
            return
        state.busy = True
        try:
            for item in frames:
                if isinstance(item, bytes) and not item.strip(_BLANK):
                    continue  # an empty frame: a keep-alive some engines send, expecting no ACK
                answer = await self._answer(item)
                if answer:
                    writer.write(frame(answer))
                    if not writer.transport.get_write_buffer_size():
                        continue  # all taken by the kernel: nothing to wait for (and no timer to arm)
                    try:
                        # A peer that stops reading its ACKs is idle too; unbounded,
                        # it would hold the connection, and stop(), for ever.
                        async with asyncio.timeout(self.idle_timeout):
                            await writer.drain()
                    except TimeoutError:
                        writer.transport.abort()  # a close would wait to flush
                        state.closed = True
                        return
        finally:
            state.busy = False

    async def _answer(self, item: bytes | OversizeFrame) -> bytes:
        if isinstance(item, OversizeFrame):
            reason = f"message of {item.size} bytes exceeds the limit of {self.max_message_bytes}"
            return build_reject_for_unreadable(item.head, reason, code="207")
        try:
            answer = await self.handler(item)
            if not isinstance(answer, (bytes, bytearray)):
                raise TypeError(f"MLLP handler returned {type(answer).__name__}, not bytes")
            return bytes(answer)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not isinstance(exc, HL7Error):
                log.exception("MLLP handler failed")
            return answer_for_failure(item, exc)


@dataclass
class _ConnectionState:
    busy: bool = False  # answering what it sent: not idle, whatever the clock says
    closed: bool = False  # aborted while answering
    last_read: float = 0.0  # event loop time when the connection last began to wait for bytes


class _IdleWatchdog:
    """Cancels the connection's task once it has waited ``idle_timeout`` for bytes.
    One timer per connection, re-armed only when it fires early: a timer per read
    (``asyncio.timeout``) was ~20% of the event loop's work per message under 8
    busy connections."""

    def __init__(self, idle_timeout: float, state: _ConnectionState) -> None:
        self.loop = asyncio.get_running_loop()
        self.idle_timeout = idle_timeout
        self.state = state
        self.fired = False
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self._timer = self.loop.call_later(idle_timeout, self._check)

    def _check(self) -> None:
        quiet = self.loop.time() - self.state.last_read
        if self.state.busy or quiet < self.idle_timeout:
            self._timer = self.loop.call_later(
                self.idle_timeout if self.state.busy else self.idle_timeout - quiet, self._check)
            return
        self.fired = True
        self.task.cancel()

    def cancel(self) -> None:
        self._timer.cancel()
