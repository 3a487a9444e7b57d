"""Fuzzing: random and mutated messages at the header reader, the mapper and a
live server. Nothing raises anything but our own errors; every framed message
gets an ACK; the server never dies."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hl7.ack import AckCode, build_ack, build_reject_for_unreadable
from hl7.client import read_ack_code
from hl7.errors import HL7Error
from hl7.facilities import FacilityConfig, default_facilities
from hl7.header import decode, read_header
from hl7.mapping import map_message
from hl7.mllp import FrameDecoder, MLLPServer, frame

from .conftest import SAMPLES

SEEDS = [p.read_bytes() for p in sorted(SAMPLES.glob("*.hl7"))]
RECEIVED = datetime(2025, 3, 1, tzinfo=timezone.utc)


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "special"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 20))]
        elif op == "truncate":
            del data[pos:]
        else:
            data[pos:pos] = draw(st.sampled_from([b"|", b"^", b"~", b"\\", b"&", b"\r", b"\n",
                                                  b"\\X", b"\\XZ\\", b"\xc3", b"MSH|", b"\x00"]))
    return bytes(data)


messages = st.one_of(st.binary(max_size=300), mutated())


def handle(raw: bytes, facilities: FacilityConfig) -> bytes:
    """What a core handler that maps before answering does."""
    header = read_header(raw)
    map_message(decode(raw, header), facilities, received_at=RECEIVED)
    return build_ack(header, AckCode.AA)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=messages)
def test_header_reader_and_mapper_raise_only_hl7_errors(raw):
    try:
        handle(raw, default_facilities())
    except HL7Error as exc:
        assert exc.code and exc.reason
    ack = build_reject_for_unreadable(raw, "fuzz")
    assert read_ack_code(ack)[0] in (AckCode.AR, AckCode.CR)  # CR when MSH-15/16 are valued


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300))
def test_mapper_given_any_text_raises_only_hl7_errors(text):
    try:
        map_message("MSH|^~\\&|A|B|C|D|2025||SIU^S12|1|P|2.5\r" + text, default_facilities(),
                    received_at=RECEIVED)
    except HL7Error:
        pass


class _ServerThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        facilities = default_facilities()

        async def handler(raw: bytes) -> bytes:
            return handle(raw, facilities)

        self.server = MLLPServer(handler, host="127.0.0.1", port=0, max_message_bytes=4096,
                                 idle_timeout=5)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> _ServerThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(5)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(grace=1), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def live_server() -> Iterator[_ServerThread]:
    with _ServerThread() as server:
        yield server


def _exchange(port: int, stream: bytes, expected: int) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(stream)
        decoder, answers = FrameDecoder(), []
        while len(answers) < expected:
            data = sock.recv(65536)
            if not data:
                break  # a clean close
            answers.extend(decoder.feed(data))
        return answers


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(batch=st.lists(messages, min_size=1, max_size=4))
def test_live_server_answers_every_framed_message_and_never_dies(live_server, batch):
    stream = b"".join(frame(m) for m in batch)
    expected = len([f for f in FrameDecoder(4096).feed(stream) if not isinstance(f, bytes) or f.strip(b" \t\r\n\x00")])
    answers = _exchange(live_server.server.port, stream, expected)
    assert len(answers) == expected
    for answer in answers:
        assert read_ack_code(answer)[0] is not None  # AA/AE/AR, or CA/CE/CR in enhanced mode
    valid = SEEDS[0]
    [ok] = _exchange(live_server.server.port, frame(valid), 1)
    assert read_ack_code(ok)[0] is not None
