"""``hl7 send`` (adapter.hl7_send) against a real MLLP listener on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import re
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
