"""MLLP client: send messages, collect their ACKs (HL7 v2.5 Appendix C).

Used by ``python -m adapter hl7 send`` and for write-back to a hospital's
MLLP listener. Each connection sends one message and waits for its ACK before
the next (what hospital senders do); a dropped connection is reopened and the
unacknowledged message sent again. In enhanced mode MSH-15 decides whether an
ACK is awaited at all (HL7 table 0155): NE never, ER only on error, SU only on
success.

>>> split_messages("MSH|^~\\\\&|A\\nPID|1\\n\\nMSH|^~\\\\&|B\\n")
['MSH|^~\\\\&|A\\rPID|1\\r', 'MSH|^~\\\\&|B\\r']
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hl7.ack import AckCode
from hl7.errors import HL7Error, MLLPClientError
from hl7.header import codec_for, read_header
from hl7.message import parse
from hl7.mllp import FrameDecoder, OversizeFrame, frame

_BATCH_SEGMENTS = ("FHS", "BHS", "BTS", "FTS")
# MSH-15 values under which no ACK means the message was accepted, as a summary says it.
_SILENCE_ACCEPTS = {"NE": "no ACK expected", "ER": "no error ACK (ER)"}
# A segment ends at CR, LF or CRLF; in a file of MLLP frames as an engine dumps them
# (HL7 v2.5 Appendix C.4), also at a frame's start or end block, which no HL7 value holds.
_LINE_ENDS = re.compile(r"\r\n|[\r\n\x0b\x1c]")
# What can stand before a segment name in a file: blanks, and the byte order mark of
# each file glued together (``cat a.hl7 b.hl7``), read as UTF-8 or as Latin-1 bytes.
_LINE_START = re.compile("^(?:\ufeff|\xef\xbb\xbf|[ \t\f\v])+")


def split_messages(text: str) -> list[str]:
    """The messages in a file's text: one or several, separated by blank lines
    or wrapped in FHS/BHS batches (HL7 v2.5 §2.10.3) or in MLLP frames
    (0x0B ... 0x1C 0x0D); each starts at an MSH. Segment ends are normalised
    to CR, and every segment ends with one; a byte order mark or blanks at the
    start of a line are dropped, so an MSH after them still starts a message.

    >>> split_messages("\\x0bMSH|^~\\\\&|A\\rPID|1\\x1c\\r\\x0bMSH|^~\\\\&|B\\r\\x1c\\r")
    ['MSH|^~\\\\&|A\\rPID|1\\r', 'MSH|^~\\\\&|B\\r']
    """
    messages: list[list[str]] = []
    for line in _LINE_ENDS.split(text):
        line = _LINE_START.sub("", line)
        if not line.strip() or line[:3] in _BATCH_SEGMENTS:
            continue
        if line.startswith("MSH"):
            messages.append([line])
        elif messages:
            messages[-1].append(line)
    return ["\r".join(segments) + "\r" for segments in messages]


def split_file(data: bytes) -> list[bytes]:
    """``split_messages`` on a file's bytes, whatever its character set: each
    message keeps the bytes it has in the file (only segment ends become CR and
    byte order marks and leading blanks go), so what the file says in 8859/1 is
    sent in 8859/1. Latin-1 maps every byte to one character and back.

    >>> split_file("MSH|^~\\\\&|A\\r\\nPID|1||D'Alò\\r\\n".encode("latin-1"))
    [b"MSH|^~\\\\&|A\\rPID|1||D'Al\\xf2\\r"]
    """
    return [message.encode("latin-1") for message in split_messages(data.decode("latin-1"))]


def encode_message(message: str) -> bytes:
    """A message's bytes in the character set its MSH-18 names (UTF-8 when
    empty or unknown)."""
    codec = "utf-8"
    try:
        header = parse(message).msh
        codec = codec_for(header.value(18).split("~")[0]) or "utf-8"
    except HL7Error:
        pass
    return message.encode(codec, "replace")


@dataclass(frozen=True)
class AckResult:
    """What happened to one sent message. ``code`` is MSA-1 of the ACK that
    answered it, ``None`` when none did: then ``no_ack`` says why that is the
    answer (MSH-15 NE: none expected; ER: no error), or ``error`` what went
    wrong (no answer, an unreadable one, an ACK to another message, or silence
    under MSH-15 SU). ``latency`` is seconds from send to ACK (or to giving up
    waiting for one)."""

    index: int
    control_id: str
    code: AckCode | None
    latency: float
    ack: bytes = b""
    error: str = ""
    attempts: int = 1
    no_ack: str = ""

    @property
    def accepted(self) -> bool:
        """AA, or CA in enhanced mode; with no ACK, sent under MSH-15 NE, or ER
        and no error came."""
        if self.code is None:
            return bool(self.no_ack)
        return self.code.is_accept

    @property
    def outcome(self) -> str:
        """What a summary counts: the ACK code, or what stands in for it."""
        return self.code.value if self.code else self.no_ack or "no ACK"


def read_ack_code(ack: bytes) -> tuple[AckCode | None, str]:
    """MSA-1 and MSA-2 of an ACK (``None`` when MSA-1 is not a known code).
    MSA-2 is as written, escapes and all: it echoes MSH-10 as sent (HL7 v2.5
    §2.14.8.2), and that is what it is compared with."""
    try:
        header = read_header(ack)
        message = parse(ack.decode(header.codec, "replace"))
    except HL7Error:
        return None, ""
    msa = message.segment("MSA")
    if msa is None:
        return None, ""
    try:
        return AckCode(msa.value(1).strip()), msa.field(2).strip()
    except ValueError:
        return None, msa.field(2).strip()


class MLLPConnection:
    """One MLLP connection: ``await send(payload)`` returns the ACK bytes."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 30.0,
        max_message_bytes: int = 10 * 1024 * 1024,
    ) -> None:
        self.host, self.port = host, port
        self.ssl_context = ssl_context
        self.timeout = timeout
        self._decoder = FrameDecoder(max_message_bytes)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: list[bytes | OversizeFrame] = []

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(
                self.host,
                self.port,
                ssl=self.ssl_context,
                server_hostname=self.host if self.ssl_context else None,
            ),
            self.timeout,
        )
        self._decoder = FrameDecoder(self._decoder.max_message_bytes)
        self._pending = []

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await asyncio.wait_for(self._writer.wait_closed(), 1.0)
            except (Exception, asyncio.CancelledError):
                pass
        self._reader = self._writer = None

    async def send(self, payload: bytes) -> bytes:
        """Send one message and wait for one answer frame, each step for at most
        ``timeout`` seconds: a listener that stops reading is a time-out too.
        Raises ``ConnectionError`` or ``asyncio.TimeoutError``."""
        await self.write(payload)
        return await self.read_answer()

    async def write(self, payload: bytes) -> None:
        """Send one message without waiting for an answer (opening the
        connection if need be). Raises ``ConnectionError`` or
        ``asyncio.TimeoutError`` when the listener takes no bytes for
        ``timeout`` seconds."""
        if self._writer is None or self._reader is None:
            await self.open()
        assert self._writer is not None
        self._writer.write(frame(payload))
        try:
            async with asyncio.timeout(self.timeout):
                await self._writer.drain()
        except TimeoutError:
            # A plain close would wait to flush what the listener never takes.
            self._writer.transport.abort()
            raise

    async def read_answer(self) -> bytes:
        """The next answer frame, waiting at most ``timeout`` seconds. Raises
        ``ConnectionError``, ``asyncio.TimeoutError`` or ``MLLPClientError``."""
        if self._reader is None:
            raise ConnectionError("not connected")
        while not self._pending:
            data = await asyncio.wait_for(self._reader.read(65536), self.timeout)
            if not data:
                raise ConnectionError("connection closed before the ACK")
            self._pending.extend(self._decoder.feed(data))
        answer = self._pending.pop(0)
        if isinstance(answer, OversizeFrame):
            raise MLLPClientError(f"ACK of {answer.size} bytes exceeds the limit")
        return answer

    async def __aenter__(self) -> MLLPConnection:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _Pacer:
    """Spaces sends ``1/rate`` seconds apart across all connections."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self._next = time.monotonic()

    async def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        slot = max(self._next, now)
        self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


async def send_messages(
    messages: Sequence[str | bytes],
    host: str,
    port: int,
    *,
    connections: int = 1,
    rate: float | None = None,
    ssl_context: ssl.SSLContext | None = None,
    tls: bool = False,
    timeout: float = 30.0,
    retries: int = 3,
    retry_delay: float = 0.2,
    on_ack: Callable[[AckResult], None] | None = None,
) -> list[AckResult]:
    """Send ``messages`` over ``connections`` MLLP connections, at most ``rate``
    per second in total, and return one ``AckResult`` per message in input
    order. A message whose connection drops or times out before its ACK is sent
    again on a new connection, up to ``retries`` more times; but no ACK is
    awaited for one sent with MSH-15 NE, and under ER or SU a time-out waiting
    for it is the answer, not a reason to send again. ``tls=True``
    without a context uses the system trust store. ``on_ack`` is called as each
    result arrives (for a progress bar)."""
    if tls and ssl_context is None:
        ssl_context = ssl.create_default_context()
    payloads = [m if isinstance(m, bytes) else encode_message(m) for m in messages]
    requests = [_ack_request(payload) for payload in payloads]
    unasked = frozenset(control_id for control_id, mode in requests if mode == "NE" and control_id)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(payloads)):
        queue.put_nowait(i)
    results: list[AckResult | None] = [None] * len(payloads)
    pacer = _Pacer(rate)

    async def worker() -> None:
        conn = MLLPConnection(host, port, ssl_context=ssl_context, timeout=timeout)
        try:
            while True:
                try:
                    index = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                result = await _deliver(conn, index, payloads[index], requests[index], unasked, pacer, retries,
                                        retry_delay)
                results[index] = result
                if on_ack is not None:
                    on_ack(result)
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(max(1, min(connections, len(payloads))))))
    return [r for r in results if r is not None]


def _ack_request(payload: bytes) -> tuple[str, str]:
    """MSH-10 of a message (as written) and the accept ACK it asks for: MSH-15
    in enhanced mode (AL, NE, ER, SU), empty in original mode or when the
    header cannot be read."""
    try:
        header = read_header(payload)
    except HL7Error:
        return "", ""
    return header.control_id, header.accept_ack_type.upper() if header.enhanced_mode else ""


async def _deliver(
    conn: MLLPConnection,
    index: int,
    payload: bytes,
    request: tuple[str, str],
    unasked: frozenset[str],
    pacer: _Pacer,
    retries: int,
    retry_delay: float,
) -> AckResult:
    control_id, mode = request
    error = ""
    for attempt in range(1, retries + 2):
        await pacer.wait()
        started = time.monotonic()
        try:
            ack = await _attempt(conn, payload, control_id, mode, unasked)
        except (OSError, asyncio.TimeoutError, MLLPClientError) as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            await conn.close()
            if attempt <= retries:
                await asyncio.sleep(retry_delay * attempt)
            continue
        latency = time.monotonic() - started
        if ack is None:
            if mode == "SU":
                error = "no ACK within the time-out (MSH-15 SU: not accepted)"
                return AckResult(index, control_id, None, latency, error=error, attempts=attempt)
            return AckResult(index, control_id, None, latency, attempts=attempt, no_ack=_SILENCE_ACCEPTS[mode])
        code, answered = read_ack_code(ack)
        error = "" if code else "answer is not a readable ACK"
        if code is not None and not _answers(control_id, code, answered):
            # A listener that sent one frame too many: every later ACK on this
            # connection would be taken for the next message's. Start afresh.
            await conn.close()
            code, error = None, f"ACK answers MSH-10 {answered or '(empty)'}, not {control_id}"
        return AckResult(index, control_id, code, latency, ack, error, attempt)
    return AckResult(index, control_id, None, 0.0, b"", error, retries + 1)


async def _attempt(
    conn: MLLPConnection, payload: bytes, control_id: str, mode: str, unasked: frozenset[str]
) -> bytes | None:
    """Send once and return the answer, or ``None`` when silence is the answer:
    MSH-15 NE (no accept ACK is sent), or ER and SU when none comes within the
    time-out (ER: sent only on error, SU: only on success; HL7 table 0155).
    Sending again would not change that. ACKs to messages sent with NE
    (``unasked``), from a listener that answers them all the same, are passed
    over."""
    await conn.write(payload)
    if mode == "NE":
        return None
    while True:
        try:
            answer = await conn.read_answer()
        except asyncio.TimeoutError:
            if mode not in ("ER", "SU"):
                raise
            await conn.close()  # so that a late answer is not taken for the next message's
            return None
        answered = read_ack_code(answer)[1] if unasked else control_id
        if answered == control_id or answered not in unasked:
            return answer


def _answers(control_id: str, code: AckCode, answered: str) -> bool:
    """Whether an ACK whose MSA-2 is ``answered`` answers the message whose
    MSH-10 is ``control_id`` (both as written). A reject with an empty MSA-2 is
    a listener's answer to a message whose MSH-10 it could not read
    (``hl7.ack.build_reject_for_unreadable``); a message whose MSH-10 we cannot
    read ourselves takes the answer that comes."""
    if not control_id or answered == control_id:
        return True
    return not answered and code in (AckCode.AR, AckCode.CR)
