"""The MLLP client: splitting files, sending, retrying on a dropped connection."""

from __future__ import annotations

import asyncio
import socket

from hl7.ack import AckCode, build_ack, build_reject_for_unreadable
from hl7.client import AckResult, read_ack_code, send_messages, split_file, split_messages
from hl7.header import read_header
from hl7.mllp import FrameDecoder, MLLPServer, frame

from .conftest import sample


def test_blank_line_separated_messages_are_split_and_lf_becomes_cr():
    messages = split_messages(sample("two_messages_blank_line.hl7").decode())
    assert len(messages) == 2
    assert all(m.startswith("MSH|") and "\n" not in m and m.endswith("\r") for m in messages)
    assert "SIU^S15" in messages[1]


def test_fhs_bhs_batches_are_unwrapped():
    messages = split_messages(sample("batch_fhs_bhs.hl7").decode())
    assert [m.split("|")[8] for m in messages] == ["ORU^R01^ORU_R01", "ADT^A04^ADT_A01"]
    assert not any(line[:3] in ("FHS", "BHS", "BTS", "FTS") for m in messages for line in m.split("\r"))


def test_a_single_message_file_gives_one_message_with_crlf_normalised():
    [message] = split_messages(sample("siu_s12_nocharset_latin1_crlf.hl7").decode("latin-1"))
    assert "\r\n" not in message and message.count("\r") == 5


def test_an_msh_after_a_byte_order_mark_or_blanks_starts_a_message_of_its_own():
    bom_saved = "\ufeffMSH|^~\\&|CUP|OSP|A|B|2025||ADT^A08|A1|P|2.5\r\nPID|1||111\r\n"
    concatenated = bom_saved + bom_saved.replace("A1", "B1").replace("111", "222")
    indented = "MSH|^~\\&|X|Y|A|B|2025||ADT^A08|C1|P|2.5\nPID|1\n\n  MSH|^~\\&|X|Y|A|B|2025||ADT^A08|C2|P|2.5\nPID|2\n"
    for text, ids in ((concatenated, ["A1", "B1"]), (indented, ["C1", "C2"])):
        messages = split_messages(text)
        assert [m.split("|")[9] for m in messages] == ids
        assert all(m.startswith("MSH|") and m.count("MSH") == 1 and m.count("PID") == 1 for m in messages)


def test_split_file_keeps_each_message_in_the_bytes_of_its_file():
    latin1 = sample("siu_s12_nocharset_latin1_crlf.hl7")
    utf8 = "\ufeffMSH|^~\\&|A|B|C|D|2025||ADT^A08|U1|P|2.5||||||UNICODE UTF-8\nPID|1||1||Nicolò\n".encode()
    first, second = split_file(latin1 + b"\r\n" + utf8)
    assert first == latin1.replace(b"\r\n", b"\r") and b"\xf2" in first
    assert second == utf8[3:].replace(b"\n", b"\r") and "ò".encode() in second


async def _accept(raw: bytes) -> bytes:
    return build_ack(read_header(raw), AckCode.AA)


def _messages(n: int) -> list[str]:
    return [
        f"MSH|^~\\&|CUP|OSP|A|B|2025||ADT^A08^ADT_A01|M{i}|P|2.5||||||8859/1\rPID|1||{i}||D'Alò^Nicolò\r"
        for i in range(n)
    ]


def test_send_messages_returns_one_ack_result_per_message_in_order_over_several_connections():
    seen: list[bytes] = []

    async def handler(raw: bytes) -> bytes:
        seen.append(raw)
        return await _accept(raw)

    async def scenario():
        server = MLLPServer(handler, host="127.0.0.1", port=0)
        await server.start()
        progress: list[AckResult] = []
        try:
            results = await send_messages(_messages(30), "127.0.0.1", server.port, connections=4,
                                          timeout=5, on_ack=progress.append)
        finally:
            await server.stop()
        return results, progress

    results, progress = asyncio.run(scenario())
    assert [r.control_id for r in results] == [f"M{i}" for i in range(30)]
    assert all(r.code is AckCode.AA and r.accepted and r.latency >= 0 for r in results)
    assert len(progress) == 30
    assert all("D'Alò".encode("latin-1") in raw for raw in seen)  # sent in the MSH-18 charset


def test_rate_limits_the_sending_pace():
    async def scenario():
        server = MLLPServer(_accept, host="127.0.0.1", port=0)
        await server.start()
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await send_messages(_messages(6), "127.0.0.1", server.port, rate=20, connections=2)
        finally:
            await server.stop()
        return loop.time() - started

    assert asyncio.run(scenario()) >= 0.2


def test_a_dropped_connection_is_reopened_and_the_unacknowledged_message_resent():
    received: list[str] = []

    async def flaky(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder()
        while data := await reader.read(65536):
            for raw in decoder.feed(data):
                cid = read_header(raw).control_id
                received.append(cid)
                if cid == "M2" and received.count("M2") == 1:
                    writer.close()  # crash before acknowledging
                    return
                writer.write(frame(build_ack(read_header(raw), AckCode.AA)))
                await writer.drain()
        writer.close()

    async def scenario():
        server = await asyncio.start_server(flaky, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await send_messages(_messages(5), "127.0.0.1", port, timeout=5, retry_delay=0.01)
        finally:
            server.close()

    results = asyncio.run(scenario())
    assert all(r.code is AckCode.AA for r in results)
    assert results[2].attempts == 2
    assert received == ["M0", "M1", "M2", "M2", "M3", "M4"]


def test_an_ack_to_another_message_is_not_taken_for_this_ones():
    async def one_frame_too_many(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder()
        while data := await reader.read(65536):
            for raw in decoder.feed(data):
                ack = frame(build_ack(read_header(raw), AckCode.AA))
                writer.write(ack + ack if read_header(raw).control_id == "M0" else ack)
                await writer.drain()
        writer.close()

    async def scenario():
        server = await asyncio.start_server(one_frame_too_many, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await send_messages(_messages(4), "127.0.0.1", port, timeout=5)
        finally:
            server.close()

    results = asyncio.run(scenario())
    assert [r.accepted for r in results] == [True, False, True, True]
    assert results[1].code is None and results[1].error == "ACK answers MSH-10 M0, not M1"
    assert [read_ack_code(r.ack)[1] for r in results] == ["M0", "M0", "M2", "M3"]


def test_a_reject_with_an_empty_msa2_answers_a_message_the_listener_could_not_read():
    async def cannot_read(raw: bytes) -> bytes:
        return build_reject_for_unreadable(b"\x00garbage", "not HL7")

    async def scenario():
        server = MLLPServer(cannot_read, host="127.0.0.1", port=0)
        await server.start()
        try:
            return await send_messages(_messages(1), "127.0.0.1", server.port, timeout=5)
        finally:
            await server.stop()

    [result] = asyncio.run(scenario())
    assert result.code is AckCode.AR and result.error == "" and not result.accepted


def _enhanced(control_id: str, accept_ack: str) -> str:
    """A message in enhanced acknowledgement mode asking for ``accept_ack`` (MSH-15)."""
    return f"MSH|^~\\&|CUP|OSP|A|B|2025||ADT^A08^ADT_A01|{control_id}|P|2.5|||{accept_ack}|NE\rPID|1||1\r"


async def _send_to(handler, messages: list[str], **options) -> list[AckResult]:  # noqa: ANN001 - an MLLP handler
    server = MLLPServer(handler, host="127.0.0.1", port=0)
    await server.start()
    try:
        return await send_messages(messages, "127.0.0.1", server.port, **options)
    finally:
        await server.stop(1)


def test_a_message_with_msh15_ne_is_sent_once_and_counted_as_sent_without_an_ack():
    received: list[str] = []

    async def honouring_ne(raw: bytes) -> bytes:
        header = read_header(raw)
        received.append(header.control_id)
        return b"" if header.accept_ack_type == "NE" else build_ack(header, AckCode.CA)

    ne, al = asyncio.run(_send_to(honouring_ne, [_enhanced("NE1", "NE"), _enhanced("AL1", "AL")], timeout=1,
                                  retry_delay=0.01))
    assert (ne.code, ne.no_ack, ne.outcome, ne.accepted, ne.attempts) == (None, "no ACK expected", "no ACK expected",
                                                                        True, 1)
    assert al.code is AckCode.CA and al.accepted
    assert received == ["NE1", "AL1"]


def test_acks_to_ne_messages_from_a_listener_that_answers_everything_are_passed_over():
    async def answering_all(raw: bytes) -> bytes:
        return build_ack(read_header(raw), AckCode.CA)

    messages = [_enhanced("NE1", "NE"), _enhanced("AL1", "AL"), _enhanced("NE2", "NE"), _enhanced("AL2", "AL")]
    results = asyncio.run(_send_to(answering_all, messages, timeout=5))
    assert all(r.accepted for r in results)
    assert [read_ack_code(r.ack)[1] for r in results if r.ack] == ["AL1", "AL2"]


def test_silence_accepts_under_msh15_er_and_rejects_under_su_and_neither_is_sent_again():
    received: list[str] = []

    async def silent(raw: bytes) -> bytes:
        received.append(read_header(raw).control_id)
        return b""  # ER: stored, so no ACK; SU: not stored, so no ACK

    er, su = asyncio.run(_send_to(silent, [_enhanced("ER1", "ER"), _enhanced("SU1", "SU")], timeout=0.3,
                                  retry_delay=0.01))
    assert (er.code, er.accepted, er.outcome, er.attempts) == (None, True, "no error ACK (ER)", 1)
    assert (su.code, su.accepted, su.outcome, su.attempts) == (None, False, "no ACK", 1)
    assert "MSH-15 SU" in su.error
    assert received == ["ER1", "SU1"]


def test_under_msh15_er_an_error_ack_is_still_read():
    async def failing(raw: bytes) -> bytes:
        return build_ack(read_header(raw), AckCode.CE)

    [er] = asyncio.run(_send_to(failing, [_enhanced("ER1", "ER")], timeout=5))
    assert er.code is AckCode.CE and not er.accepted


def test_an_unreachable_listener_gives_results_with_errors_not_an_exception():
    async def scenario():
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        return await send_messages(_messages(2), "127.0.0.1", port, retries=1, retry_delay=0.01,
                                   timeout=1)

    results = asyncio.run(scenario())
    assert [r.code for r in results] == [None, None]
    assert all(r.error and r.attempts == 2 for r in results)


def test_a_listener_that_never_reads_gives_a_time_out_result_instead_of_a_hang():
    async def scenario():
        with socket.socket() as listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel accepts, nobody reads
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            big = _messages(1)[0].encode("latin-1") + b"OBX|1|ED|PDF||" + b"A" * 8_000_000 + b"\r"
            return await asyncio.wait_for(
                send_messages([big], "127.0.0.1", listener.getsockname()[1], timeout=0.5, retries=1,
                              retry_delay=0.01),
                10,
            )

    [result] = asyncio.run(scenario())
    assert result.code is None and "TimeoutError" in result.error and result.attempts == 2
