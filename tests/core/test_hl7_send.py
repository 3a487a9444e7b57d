"""``hl7 send`` (adapter.hl7_send) against a real MLLP listener on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import re
import socket
import time
from pathlib import Path

from rich.console import Console

from adapter.hl7_send import send_files
from hl7.ack import AckCode, build_ack
from hl7.header import read_header
from hl7.mllp import MLLPServer

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "hl7"


def send(paths: list[Path], handler) -> tuple[int, str]:  # noqa: ANN001 - an MLLP handler
    """``send_files`` to an ``MLLPServer`` running ``handler``: the exit code and what it printed."""
    out = io.StringIO()

    async def scenario() -> int:
        server = MLLPServer(handler, host="127.0.0.1", port=0)
        await server.start()
        try:
            return await asyncio.to_thread(send_files, paths, host="127.0.0.1", port=server.port, connections=1,
                                           rate=None, timeout=5, console=Console(file=out, width=200))
        finally:
            await server.stop(1)

    return asyncio.run(asyncio.wait_for(scenario(), 20)), out.getvalue()


def test_latin1_files_reach_the_listener_byte_for_byte(tmp_path):
    received: list[bytes] = []

    async def recording(raw: bytes) -> bytes:
        received.append(raw)
        return build_ack(read_header(raw), AckCode.AA)

    names = ["siu_s12_latin1_lf.hl7", "siu_s12_nocharset_latin1_crlf.hl7", "adt_a08_v23_latin1.hl7"]
    files = [SAMPLES / name for name in names]
    empty_msh18 = tmp_path / "empty_msh18.hl7"
    empty_msh18.write_bytes("MSH|^~\\&|CUP|OSP|A|B|2025||ADT^A08^ADT_A01|L2|P|2.5\rPID|1||1||D'Alò^Nicolò\r".encode("latin-1"))
    files.append(empty_msh18)
    code, _ = send(files, recording)
    assert code == 0
    assert received == [re.sub(rb"\r\n|\n", b"\r", file.read_bytes()) for file in files]


def test_a_message_sent_with_msh15_ne_counts_as_sent_with_no_ack_expected(tmp_path):
    async def honouring_ne(raw: bytes) -> bytes:
        header = read_header(raw)
        return b"" if header.accept_ack_type == "NE" else build_ack(header, AckCode.CA)

    messages = tmp_path / "enhanced.hl7"
    messages.write_text("MSH|^~\\&|CUP|OSP|A|B|2025||ADT^A08^ADT_A01|NE1|P|2.5|||NE|NE\rPID|1\r\n\n"
                        "MSH|^~\\&|CUP|OSP|A|B|2025||ADT^A08^ADT_A01|AL1|P|2.5|||AL|NE\rPID|1\r")
    code, printed = send([messages], honouring_ne)
    assert code == 0, printed
    assert "ACKs: CA 1, no ACK expected 1" in printed


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_files_as_engines_dump_them_reach_the_listener_as_the_messages_they_hold(tmp_path):
    """MLLP frames (a last segment without its CR before 0x1C, as some engines write),
    a byte order mark with CRLF ends and trailing blank lines, an FHS/BHS batch."""
    received: list[bytes] = []

    async def recording(raw: bytes) -> bytes:
        received.append(raw)
        return build_ack(read_header(raw), AckCode.AA)

    framed = tmp_path / "dump.mllp"
    framed.write_bytes(b"\x0bMSH|^~\\&|A|F|B|C|2025||ADT^A08|F1|P|2.5\rPID|1\x1c\r"
                       b"\x0bMSH|^~\\&|A|F|B|C|2025||ADT^A08|F2|P|2.5\rPID|2\r\x1c\r")
    bom = tmp_path / "bom.hl7"
    bom.write_bytes(b"\xef\xbb\xbfMSH|^~\\&|A|F|B|C|2025||ADT^A08|B1|P|2.5\r\nPID|3\r\n\r\n\r\n")
    code, printed = send([framed, bom, SAMPLES / "batch_fhs_bhs.hl7"], recording)
    assert code == 0, printed
    assert received[:3] == [b"MSH|^~\\&|A|F|B|C|2025||ADT^A08|F1|P|2.5\rPID|1\r",
                            b"MSH|^~\\&|A|F|B|C|2025||ADT^A08|F2|P|2.5\rPID|2\r",
                            b"MSH|^~\\&|A|F|B|C|2025||ADT^A08|B1|P|2.5\rPID|3\r"]
    assert len(received) == 5 and not any(raw[:3] in (b"FHS", b"BHS") or b"BTS|" in raw for raw in received)


def test_dry_run_says_how_many_messages_of_which_types_without_connecting(tmp_path):
    out = io.StringIO()
    folder = tmp_path / "feed"
    folder.mkdir()
    (folder / "README.md").write_text("what these are\n")
    (folder / "two.hl7").write_bytes((SAMPLES / "two_messages_blank_line.hl7").read_bytes())
    code = send_files([folder, SAMPLES / "siu_s12_utf8_cr.hl7", SAMPLES / "oru_r01_final.hl7"], host="127.0.0.1",
                      port=closed_port(), connections=1, rate=None, timeout=5, console=Console(file=out, width=80),
                      dry_run=True)
    assert code == 0, out.getvalue()
    lines = out.getvalue().splitlines()
    assert lines[0] == f"skipped {folder / 'README.md'}: no HL7 message in it"
    assert lines[1].startswith("4 messages in 3 files: SIU^S12 ") and "ORU^R01 1" in lines[1]


def test_a_named_file_without_a_message_or_an_unreachable_listener_is_one_line_and_exit_2_sending_nothing(tmp_path):
    """A file with no message among others was skipped in silence (exit 0); a wrong
    port printed a line a message after retrying each for over a second."""
    received: list[bytes] = []

    async def recording(raw: bytes) -> bytes:
        received.append(raw)
        return build_ack(read_header(raw), AckCode.AA)

    empty = tmp_path / "export.hl7"
    empty.write_bytes(b"\r\n\r\n")
    utf16 = tmp_path / "notepad.hl7"
    utf16.write_bytes("MSH|^~\\&|A|F|B|C|2025||ADT^A08|U1|P|2.5\r".encode("utf-16"))
    for bad in (empty, utf16):
        code, printed = send([SAMPLES / "siu_s12_utf8_cr.hl7", bad], recording)
        assert code == 2 and len(printed.splitlines()) == 1 and str(bad) in printed, printed
    assert "UTF-16" in printed and received == []

    out = io.StringIO()
    began = time.monotonic()
    code = send_files([SAMPLES / "siu_s12_utf8_cr.hl7"] * 20, host="127.0.0.1", port=(port := closed_port()),
                      connections=1, rate=None, timeout=5, console=Console(file=out, width=80))
    assert code == 2 and time.monotonic() - began < 2
    assert out.getvalue().splitlines() == [f"cannot connect to the MLLP listener at 127.0.0.1:{port}: "
                                           "connection refused (is that the port?)"]
