"""MLLP framing and the server, over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hl7.ack import AckCode, build_ack
from hl7.client import MLLPConnection, read_ack_code
from hl7.header import read_header
from hl7.mllp import (
    CARRIAGE_RETURN,
    END_BLOCK,
    START_BLOCK,
    FrameDecoder,
    MLLPServer,
    OversizeFrame,
    ServerTLS,
    certificate_not_after,
    client_ssl_context,
    frame,
    server_ssl_context,
)

from .conftest import make_pki, sample

SIU = sample("siu_s12_utf8_cr.hl7")


async def accept_all(raw: bytes) -> bytes:
    return build_ack(read_header(raw), AckCode.AA)


def message(control_id: str) -> bytes:
    return (
        f"MSH|^~\\&|CUP|OSP|ADAPTER|APP|20250101120000||SIU^S12^SIU_S12|{control_id}|P|2.5\r"
        "PID|1||1^^^OSP^MR\r"
    ).encode()


# ------------------------------------------------------------------ framing

payloads = st.lists(
    st.binary(min_size=0, max_size=200).map(
        lambda b: b.replace(START_BLOCK, b"").replace(END_BLOCK, b"")
    ),
    min_size=0,
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(messages=payloads, cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=20),
       noise=st.binary(max_size=20).map(lambda b: b.replace(START_BLOCK, b"")))
def test_any_split_of_the_byte_stream_gives_the_same_messages(messages, cuts, noise):
    stream = noise + b"".join(frame(m) + noise for m in messages)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    decoder = FrameDecoder()
    got = []
    previous = 0
    for point in points + [len(stream)]:
        got.extend(decoder.feed(stream[previous:point]))
        previous = point
    assert got == messages


def test_several_messages_in_one_read_are_all_returned_in_order():
    decoder = FrameDecoder()
    assert decoder.feed(frame(b"A") + frame(b"B") + frame(b"C")) == [b"A", b"B", b"C"]


def test_bytes_outside_a_frame_are_discarded_and_a_restart_abandons_the_partial_frame():
    decoder = FrameDecoder()
    assert decoder.feed(b"junk\r\n" + START_BLOCK + b"half" + START_BLOCK + b"whole" + END_BLOCK) == [
        b"whole"
    ]
    assert decoder.feed(CARRIAGE_RETURN + b"tail") == []


def test_a_frame_over_the_limit_is_reported_with_its_head_and_size_and_memory_stays_bounded():
    decoder = FrameDecoder(max_message_bytes=10_000)
    assert decoder.feed(START_BLOCK + SIU) == []
    for _ in range(100):
        assert decoder.feed(b"x" * 1000) == []
    [oversize] = decoder.feed(END_BLOCK + CARRIAGE_RETURN + frame(b"next"))[:1]
    assert isinstance(oversize, OversizeFrame)
    assert oversize.size == len(SIU) + 100_000
    assert oversize.head.startswith(b"MSH|") and len(oversize.head) <= 4096
    assert decoder.feed(b"") == []


# ------------------------------------------------------------------ server


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


async def started(handler=accept_all, **options) -> MLLPServer:
    server = MLLPServer(handler, host="127.0.0.1", port=0, **options)
    await server.start()
    return server


def test_server_acknowledges_each_message_with_msa2_equal_to_msh10():
    async def scenario():
        server = await started()
        try:
            async with MLLPConnection("127.0.0.1", server.port, timeout=5) as conn:
                for i in range(3):
                    ack = await conn.send(message(f"C{i}"))
                    assert read_ack_code(ack) == (AckCode.AA, f"C{i}")
        finally:
            await server.stop()

    run(scenario())


def test_an_empty_frame_is_a_keep_alive_and_gets_no_answer_that_would_pass_for_the_next_message_s_ack():
    async def scenario():
        server = await started(idle_timeout=0.5)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            for _ in range(3):  # keep-alives, more often than the idle time-out
                writer.write(frame(b"") + frame(b"\r\n"))
                await asyncio.sleep(0.3)
            writer.write(frame(message("AFTER")))
            answer = FrameDecoder().feed(await asyncio.wait_for(reader.readuntil(END_BLOCK + CARRIAGE_RETURN), 5))
            assert [read_ack_code(a) for a in answer] == [(AckCode.AA, "AFTER")]
            writer.close()
        finally:
            await server.stop()

    run(scenario())


def test_pipelined_messages_in_one_write_are_answered_in_order():
    async def scenario():
        server = await started()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"".join(frame(message(f"P{i}")) for i in range(20)))
            await writer.drain()
            decoder, acks = FrameDecoder(), []
            while len(acks) < 20:
                acks.extend(decoder.feed(await reader.read(65536)))
            assert [read_ack_code(a)[1] for a in acks] == [f"P{i}" for i in range(20)]
            writer.close()
        finally:
            await server.stop()

    run(scenario())


def test_oversize_message_is_answered_ar_and_the_connection_keeps_working():
    async def scenario():
        server = await started(max_message_bytes=2_000)
        try:
            async with MLLPConnection("127.0.0.1", server.port, timeout=5) as conn:
                big = message("BIG") + b"NTE|1||" + b"x" * 5_000 + b"\r"
                code, control_id = read_ack_code(await conn.send(big))
                assert (code, control_id) == (AckCode.AR, "BIG")
                assert read_ack_code(await conn.send(message("SMALL"))) == (AckCode.AA, "SMALL")
        finally:
            await server.stop()

    run(scenario())


def test_unreadable_message_is_answered_ar_with_err():
    async def scenario():
        server = await started()
        try:
            async with MLLPConnection("127.0.0.1", server.port, timeout=5) as conn:
                ack = await conn.send(b"PID|1||no header here\r")
                assert read_ack_code(ack)[0] == AckCode.AR
                assert b"\rERR|" in ack
        finally:
            await server.stop()

    run(scenario())


def test_handler_exception_is_answered_ae_and_the_connection_stays_open():
    async def failing(raw: bytes) -> bytes:
        if b"|BOOM|" in raw:
            raise RuntimeError("database unavailable")
        return await accept_all(raw)

    async def scenario():
        server = await started(failing)
        try:
            async with MLLPConnection("127.0.0.1", server.port, timeout=5) as conn:
                ack = await conn.send(message("BOOM"))
                assert read_ack_code(ack) == (AckCode.AE, "BOOM")
                assert b"207" in ack and b"database" not in ack
                assert read_ack_code(await conn.send(message("OK")))[0] == AckCode.AA
        finally:
            await server.stop()

    run(scenario())


def test_idle_connection_is_closed_after_the_idle_timeout():
    async def scenario():
        server = await started(idle_timeout=0.3)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            assert await asyncio.wait_for(reader.read(), 3) == b""
            writer.close()
        finally:
            await server.stop()

    run(scenario())


def test_a_peer_that_never_reads_its_acks_is_closed_after_the_idle_timeout():
    async def scenario():
        answered = asyncio.Event()

        async def huge_answer(raw: bytes) -> bytes:
            answered.set()
            return await accept_all(raw) + b"NTE|1||" + b"x" * 8_000_000 + b"\r"  # more than socket buffers hold

        server = await started(huge_answer, idle_timeout=0.3)
        try:
            with socket.socket() as peer:
                peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                peer.connect(("127.0.0.1", server.port))
                peer.sendall(frame(message("UNREAD")))
                await answered.wait()
                assert server.connection_count == 1
                for _ in range(100):  # up to 5 s; it hung for ever
                    if server.connection_count == 0:
                        break
                    await asyncio.sleep(0.05)
                assert server.connection_count == 0
        finally:
            await server.stop(grace=1)

    run(scenario())


def test_many_concurrent_connections_each_keep_their_order():
    seen: dict[str, list[int]] = {}

    async def recording(raw: bytes) -> bytes:
        header = read_header(raw)
        conn, n = header.control_id.split("-")
        seen.setdefault(conn, []).append(int(n))
        await asyncio.sleep(0)
        return build_ack(header, AckCode.AA)

    async def client(port: int, name: str) -> list[str]:
        async with MLLPConnection("127.0.0.1", port, timeout=10) as conn:
            return [read_ack_code(await conn.send(message(f"{name}-{i}")))[1] for i in range(25)]

    async def scenario():
        server = await started(recording)
        try:
            answers = await asyncio.gather(*(client(server.port, f"c{k}") for k in range(40)))
        finally:
            await server.stop()
        for k, got in enumerate(answers):
            assert got == [f"c{k}-{i}" for i in range(25)]
            assert seen[f"c{k}"] == list(range(25))

    run(scenario())


def test_graceful_stop_finishes_the_message_in_flight_then_refuses_new_connections():
    release = asyncio.Event

    async def scenario():
        gate = release()
        entered = release()

        async def slow(raw: bytes) -> bytes:
            entered.set()
            await gate.wait()
            return await accept_all(raw)

        server = await started(slow)
        port = server.port
        conn = MLLPConnection("127.0.0.1", port, timeout=5)
        await conn.open()
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        sending = asyncio.create_task(conn.send(message("INFLIGHT")))
        await entered.wait()
        stopping = asyncio.create_task(server.stop(grace=5))
        await asyncio.sleep(0.1)
        assert not stopping.done()
        gate.set()
        assert read_ack_code(await sending) == (AckCode.AA, "INFLIGHT")
        await stopping
        assert await asyncio.wait_for(idle_reader.read(), 2) == b""
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
        await conn.close()
        idle_writer.close()

    run(scenario())


def test_tls_connection_is_acknowledged(pki):
    async def scenario():
        server = await started(ssl_context=server_ssl_context(pki.server_cert, pki.server_key))
        try:
            ctx = client_ssl_context(pki.ca)
            async with MLLPConnection("127.0.0.1", server.port, ssl_context=ctx, timeout=5) as conn:
                assert read_ack_code(await conn.send(message("TLS")))[0] == AckCode.AA
        finally:
            await server.stop()

    run(scenario())


def test_mutual_tls_accepts_a_trusted_client_and_refuses_an_unknown_one(pki):
    async def scenario():
        ctx = server_ssl_context(pki.server_cert, pki.server_key, client_ca=pki.ca)
        server = await started(ssl_context=ctx)
        try:
            trusted = client_ssl_context(pki.ca, pki.client_cert, pki.client_key)
            async with MLLPConnection("127.0.0.1", server.port, ssl_context=trusted, timeout=5) as c:
                assert read_ack_code(await c.send(message("MTLS")))[0] == AckCode.AA
            for cert in ((pki.stranger_cert, pki.stranger_key), (None, None)):
                stranger = client_ssl_context(pki.ca, *cert)
                with pytest.raises((ssl.SSLError, ConnectionError, OSError, asyncio.TimeoutError)):
                    async with MLLPConnection(
                        "127.0.0.1", server.port, ssl_context=stranger, timeout=3
                    ) as c:
                        await c.send(message("NOPE"))
            async with MLLPConnection("127.0.0.1", server.port, ssl_context=trusted, timeout=5) as c:
                assert read_ack_code(await c.send(message("STILL")))[0] == AckCode.AA
        finally:
            await server.stop()

    run(scenario())


def test_replaced_certificate_files_are_used_from_the_next_connection_without_a_restart(tmp_path, caplog):
    """A hospital's yearly certificate change, and a client CA replaced (the old one
    no longer trusted): the listener reads the new files at the next handshake; a
    connection opened before keeps going; files that do not load leave the last good
    certificate in use."""
    import shutil

    old, new = make_pki(tmp_path.joinpath("old")), make_pki(tmp_path.joinpath("new"))
    live = tmp_path / "live"
    live.mkdir()

    def install(pki_: object, **override: bytes) -> None:
        for name, source in (("cert.pem", pki_.server_cert), ("key.pem", pki_.server_key), ("ca.pem", pki_.ca)):
            staged = live / f".{name}"
            if name in override:
                staged.write_bytes(override[name])
            else:
                shutil.copyfile(source, staged)
            staged.replace(live / name)

    def client(pki_: object, *, presenting: object | None = None) -> ssl.SSLContext:
        presenting = presenting or pki_
        return client_ssl_context(pki_.ca, presenting.client_cert, presenting.client_key)

    async def answers(ctx: ssl.SSLContext, control_id: str) -> bool:
        try:
            async with MLLPConnection("127.0.0.1", server.port, ssl_context=ctx, timeout=3) as conn:
                return read_ack_code(await conn.send(message(control_id)))[0] == AckCode.AA
        except (ssl.SSLError, ConnectionError, OSError, asyncio.TimeoutError):
            return False

    async def scenario():
        nonlocal server
        install(old)
        tls = ServerTLS(live / "cert.pem", live / "key.pem", live / "ca.pem")
        server = await started(ssl_context=tls.context)
        try:
            assert await answers(client(old), "OLD1")
            assert not await answers(client(new), "NEW0")  # new CA: the server's certificate is not trusted
            async with MLLPConnection("127.0.0.1", server.port, ssl_context=client(old), timeout=5) as kept:
                assert read_ack_code(await kept.send(message("KEPT1")))[0] == AckCode.AA
                install(new)
                assert await answers(client(new), "NEW1")
                assert not await answers(client(old), "OLD2")  # old server certificate, old client CA
                assert not await answers(client(new, presenting=old), "OLD3")  # the old CA's client cert
                assert read_ack_code(await kept.send(message("KEPT2")))[0] == AckCode.AA
            assert tls.not_after == certificate_not_after(new.server_cert)
            install(new, **{"cert.pem": b"-----BEGIN CERTIFICATE-----\nhalf", "key.pem": b""})
            with caplog.at_level("WARNING", logger="hl7.mllp"):
                assert await answers(client(new), "NEW2")
                assert await answers(client(new), "NEW3")
            assert [r.getMessage() for r in caplog.records].count(
                "MLLP TLS: the certificate files changed but do not load (SSLError); the previous certificate "
                "stays in use") == 1, caplog.records
        finally:
            await server.stop()

    server = None
    run(scenario())


def test_serve_exports_its_connections_feeds_and_certificate_and_warns_of_a_certificate_about_to_expire(
        pki, tmp_path, caplog):
    """What an operator alerts on: a feed gone silent (when each configured sending
    facility last had a message stored; 'other' for the rest), the connections open,
    the certificate's expiry (and a warning at start when it is near)."""
    import time

    from prometheus_client.parser import text_string_to_metric_families

    from tests.harness import running_adapter, settings_for

    settings = settings_for(tmp_path, mllp_tls_cert=str(pki.server_cert), mllp_tls_key=str(pki.server_key))
    with caplog.at_level("WARNING", logger="adapter.runtime"), running_adapter(settings) as adapter:
        def scrape() -> dict[tuple[str, tuple], float]:
            with adapter.client("officer") as officer:
                text = officer.get("/metrics").text
            return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                    for family in text_string_to_metric_families(text) for sample in family.samples}

        async def send_and_scrape() -> dict[tuple[str, tuple], float]:
            async with MLLPConnection("127.0.0.1", adapter.mllp_port, ssl_context=client_ssl_context(pki.ca),
                                      timeout=5) as conn:
                for control_id, facility in (("T1", "OSP"), ("T2", "LAB_CENTRALE")):
                    raw = message(control_id).replace(b"|CUP|OSP|", f"|CUP|{facility}|".encode(), 1)
                    assert read_ack_code(await conn.send(raw))[0] == AckCode.AA
                return await asyncio.to_thread(scrape)

        before = time.time()
        metrics = run(send_and_scrape())
        for _ in range(100):  # the server notices the close
            if scrape()[("adapter_mllp_connections", ())] == 0:
                break
            time.sleep(0.05)
        assert scrape()[("adapter_mllp_connections", ())] == 0
    assert metrics[("adapter_mllp_connections", ())] == 1
    last = {labels[0][1]: value for (name, labels), value in metrics.items()
            if name == "adapter_hl7_last_message_timestamp_seconds"}
    # This process's gauge: other tests' adapters may have set other facilities before.
    assert all(before <= last[facility] <= time.time() for facility in ("other", "LAB_CENTRALE")), last
    assert "OSP" not in last  # not configured: counted as other, never a label of its own
    expiry = metrics[("adapter_mllp_tls_certificate_expiry_timestamp_seconds", ())]
    assert expiry == certificate_not_after(pki.server_cert).timestamp()
    warned = [r.getMessage() for r in caplog.records if "MLLP TLS certificate expires on" in r.getMessage()]
    assert warned and "(in 0 days)" in warned[0], warned


def test_mllp_tls_settings_that_cannot_work_are_named_one_line_each_before_serving(pki, tmp_path):
    from adapter.runtime import mllp_tls_problems
    from tests.harness import settings_for

    def problems(**tls: str) -> list[str]:
        return mllp_tls_problems(settings_for(tmp_path, **{f"mllp_tls_{k}": v for k, v in tls.items()}))

    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    assert problems() == []
    assert problems(cert=str(pki.server_cert), key=str(pki.server_key), client_ca=str(pki.ca)) == []
    assert problems(client_ca=str(pki.ca)) == [
        "ADAPTER_MLLP_TLS_CLIENT_CA is set but ADAPTER_MLLP_TLS_CERT is not: the MLLP listener would not use TLS"]
    assert problems(cert=str(tmp_path / "nope.pem"), key=str(pki.server_key)) == [
        f"ADAPTER_MLLP_TLS_CERT: no readable file {tmp_path / 'nope.pem'}"]
    for wrong in ({"cert": str(garbage), "key": str(pki.server_key)},
                  {"cert": str(pki.server_cert), "key": str(pki.client_key)},  # not this certificate's key
                  {"cert": str(pki.server_cert)}):  # no key, and none in the certificate's file
        said = problems(**wrong)
        assert len(said) == 1 and said[0].startswith("ADAPTER_MLLP_TLS_CERT, ADAPTER_MLLP_TLS_KEY"), (wrong, said)


def test_serve_refuses_to_start_with_mllp_tls_it_cannot_use(pki, tmp_path):
    from tests.core.test_cli import cli

    result = cli(tmp_path, "serve", "--http-port", "0", "--mllp-port", "0", env={"ADAPTER_MLLP_TLS_CLIENT_CA": str(pki.ca)})
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "configuration error: ADAPTER_MLLP_TLS_CLIENT_CA is set but ADAPTER_MLLP_TLS_CERT is not" in \
        " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr


def test_hl7_send_reaches_a_mutual_tls_listener_with_its_own_ca_and_client_certificate(pki, tmp_path):
    """``python -m adapter hl7 send --tls-ca --tls-cert --tls-key``: what an integration
    engineer needs to try a listener whose certificate comes from the hospital's own
    CA and which asks for a client certificate (--tls alone trusts the system's CAs)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    feed = tmp_path / "feed.hl7"
    feed.write_bytes(message("CLI-MTLS"))
    root = Path(__file__).resolve().parents[2]

    async def scenario():
        server = await started(ssl_context=server_ssl_context(pki.server_cert, pki.server_key, client_ca=pki.ca))
        try:
            def send(*tls: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run([sys.executable, "-m", "adapter", "hl7", "send", str(feed), "--port",
                                       str(server.port), "--timeout", "3", *tls], cwd=root, capture_output=True,
                                      text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
            trusted = await asyncio.to_thread(send, "--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert),
                                              "--tls-key", str(pki.client_key))
            anonymous = await asyncio.to_thread(send, "--tls-ca", str(pki.ca))
            return trusted, anonymous
        finally:
            await server.stop()

    trusted, anonymous = asyncio.run(asyncio.wait_for(scenario(), 90))
    assert trusted.returncode == 0 and "AA 1" in trusted.stdout, trusted.stdout + trusted.stderr
    assert anonymous.returncode == 1 and "AA" not in anonymous.stdout


def test_beyond_the_connections_one_address_may_hold_it_is_closed_and_other_addresses_are_still_served():
    """One hospital's reconnect loop must not take the connections of the others."""
    async def connect(port: int, address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", port, local_addr=(address, 0))

    async def answered(pair: tuple[asyncio.StreamReader, asyncio.StreamWriter], control_id: str) -> bytes:
        reader, writer = pair
        writer.write(frame(message(control_id)))
        try:
            return await asyncio.wait_for(reader.read(4096), 5)
        except ConnectionResetError:
            return b""

    async def scenario():
        server = await started(max_connections_per_address=2)
        try:
            held = [await connect(server.port, "127.0.0.2") for _ in range(2)]
            for n, pair in enumerate(held):
                assert b"MSA|AA|" in await answered(pair, f"H{n}")
            assert await answered(await connect(server.port, "127.0.0.2"), "H2") == b""  # closed, unanswered
            assert b"MSA|AA|" in await answered(await connect(server.port, "127.0.0.3"), "OTHER")
            held[0][1].close()
            for _ in range(100):  # the server notices the close
                if server.connection_count < 3:
                    break
                await asyncio.sleep(0.02)
            assert b"MSA|AA|" in await answered(await connect(server.port, "127.0.0.2"), "H3")
        finally:
            await server.stop()

    run(scenario())


def test_beyond_max_connections_a_new_connection_is_closed_and_the_open_ones_keep_working():
    """A sender stuck in a reconnect loop must not take every file descriptor."""
    async def scenario():
        server = await started(max_connections=2)
        try:
            first = MLLPConnection("127.0.0.1", server.port, timeout=5)
            second = MLLPConnection("127.0.0.1", server.port, timeout=5)
            for conn, tag in ((first, "C1"), (second, "C2")):
                assert read_ack_code(await conn.send(message(tag)))[0] == AckCode.AA
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(frame(message("C3")))
            try:
                answered = await asyncio.wait_for(reader.read(), 5)
            except ConnectionResetError:  # closed with the message unread
                answered = b""
            assert answered == b""  # closed, nothing answered
            writer.close()
            assert read_ack_code(await first.send(message("C1b")))[0] == AckCode.AA
            await second.close()
            for _ in range(100):  # the server notices the close
                if server.connection_count < 2:
                    break
                await asyncio.sleep(0.02)
            async with MLLPConnection("127.0.0.1", server.port, timeout=5) as again:
                assert read_ack_code(await again.send(message("C4")))[0] == AckCode.AA
            await first.close()
        finally:
            await server.stop()

    run(scenario())


def test_a_connection_that_keeps_sending_is_not_idle_however_long_it_lasts():
    async def scenario():
        server = await started(idle_timeout=0.3)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            for n in range(12):  # 1.2 s: four idle time-outs, each reset by a message
                writer.write(frame(message(f"KEEP{n}")))
                assert b"MSA|AA|KEEP%d" % n in await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 2)
                await asyncio.sleep(0.1)
            last = frame(message("LAST"))
            writer.write(last[:10])  # part of a message: the connection is not idle either
            await asyncio.sleep(0.2)
            writer.write(last[10:])
            assert b"MSA|AA|LAST" in await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 2)
            assert await asyncio.wait_for(reader.read(), 3) == b""  # then quiet: closed
            writer.close()
        finally:
            await server.stop()

    run(scenario())
