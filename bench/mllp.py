"""MLLP: messages per second and ACK latency through the real adapter (durable
storage, SQLite WAL) against baselines measured in the same run:

- bare asyncio: an ACK-only server that parses nothing and stores nothing (the limit);
- hl7apy's own ``MLLPServer`` (a ``socketserver``) whose handler parses with
  ``hl7apy.parser.parse_message`` and answers AA; it closes the connection after
  each message, so the client reconnects per message for it;
- python-hl7's asyncio MLLP server (``hl7.mllp.start_hl7_server``), the other Python
  server an integration engineer would pick: it parses each message with python-hl7
  and answers ``create_ack()``, storing nothing. Installed by ``make install`` in
  ``.venv/bench-peers`` (its top-level ``hl7`` would hide ours) and run outside the
  checkout.

Every server runs in its own process; the load generator (this process) is a
lean asyncio client: each connection sends a 6-segment SIU^S12 with Italian
names and a unique MSH-10 and waits for its ACK before the next. The p99 at
half the maximum rate is measured with ``hl7.client.send_messages(rate=...)``.
The end-to-end figure sends a fixed number of messages and waits until
``/api/messages`` shows every one ``processed`` (mapped to events, notifications
scheduled, confirmations sent to the sandbox).

Run: ``.venv/bin/python -m bench.mllp`` (``BENCH_SECONDS=1`` for a quick look).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import httpx

from bench.common import (
    HOST,
    PEERS_DIR,
    SECONDS,
    adapter_process,
    free_port,
    header,
    percentile,
    python_server,
    unique_tag,
    verdict,
)

TARGET_OF_BARE = 0.40
TARGET_OF_HL7APY = 10.0
TARGET_P99_S = 0.020
TARGET_E2E = 1000.0
E2E_MESSAGES = int(os.environ.get("BENCH_E2E_MESSAGES", "3000"))

GIVEN = ["Nicolò", "Niccolò", "Lucia", "Gioele", "Mattia", "Beatrice", "Ilaria", "Andrea", "Chiara", "Noè"]
FAMILY = ["D'Alò", "Bertè", "Cantù", "Rossi", "Esposito", "Ferrari", "Mazzà", "Lòpez", "Zanè", "Galli"]

BARE_SERVER = r"""
import asyncio, os
ACK_HEAD = b"\x0bMSH|^~\\&|BARE|BENCH|CUP|OSPEDALE_BENCH|20300101000000||ACK^S12^ACK|1|P|2.5\rMSA|AA|"
async def handle(reader, writer):
    try:
        while True:
            data = await reader.readuntil(b"\x1c\r")
            control_id = data.split(b"\r", 1)[0].split(b"|")[9]
            writer.write(ACK_HEAD + control_id + b"\r\x1c\r")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(os.environ["BENCH_PORT"]))
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""

HL7APY_SERVER = r"""
import os
from hl7apy.mllp import AbstractHandler, MLLPServer
from hl7apy.parser import parse_message
class Handler(AbstractHandler):
    def reply(self):
        message = parse_message(self.incoming_message, find_groups=False)
        return ("\x0bMSH|^~\\&|HL7APY|BENCH|CUP|OSPEDALE_BENCH|20300101000000||ACK^S12^ACK|1|P|2.5\rMSA|AA|"
                + message.msh.msh_10.value + "\r\x1c\r")
MLLPServer.allow_reuse_address = True
server = MLLPServer("127.0.0.1", int(os.environ["BENCH_PORT"]), {t: (Handler,) for t in ("SIU^S12^SIU_S12", "SIU^S12")})
server.serve_forever()
"""


# python-hl7's asyncio MLLP server, as its documentation shows it: each message parsed
# by python-hl7 and answered with its create_ack(); nothing stored.
PYTHON_HL7_SERVER = r"""
import asyncio, os
import hl7
from hl7.mllp import start_hl7_server
async def process(reader, writer):
    try:
        while not writer.is_closing():
            message = await reader.readmessage()
            writer.writemessage(message.create_ack())
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
async def main():
    async with await start_hl7_server(process, host="127.0.0.1", port=int(os.environ["BENCH_PORT"]), encoding="utf-8") as server:
        await server.serve_forever()
asyncio.run(main())
"""


# The floor of durable storage in Python, measured beside the adapter: the least a
# server can do and still answer AA only once a message is on disk. An asyncio
# Protocol (no streams), MSH-10 by a plain split; every message read in one turn of
# the event loop written and made durable at once, on the loop's own thread (a
# thread for the write measured worse: 0.20 of the bare server against 0.30 for the
# same write on the loop, 2026-11-28), then the ACKs. ``BENCH_STORE`` picks the
# store: a preallocated journal file opened O_DSYNC (each write durable when it
# returns: the cheapest sync measured here, 98 us against 172 us for append and
# fdatasync), or a SQLite WAL table with synchronous=FULL (the adapter's store,
# without its sealing, its duplicate check or its metadata). No sealing, no header
# checks, no duplicates, no metrics: not a product, a ceiling.
MINIMAL_DURABLE_SERVER = r"""
import asyncio, os, sqlite3
ACK_HEAD = b"\x0bMSH|^~\\&|MIN|BENCH|CUP|OSPEDALE_BENCH|20300101000000||ACK^S12^ACK|1|P|2.5\rMSA|AA|"
folder = os.environ["BENCH_DIR"]
if os.environ["BENCH_STORE"] == "journal":
    path = os.path.join(folder, "journal")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    os.pwrite(fd, bytes(256 << 20), 0)  # allocated up front: a write then changes no metadata
    os.fsync(fd)
    os.close(fd)
    fd, at = os.open(path, os.O_WRONLY | os.O_DSYNC), 0
    def write(blobs):
        global at
        data = b"".join(len(b).to_bytes(4, "big") + b for b in blobs)
        os.pwrite(fd, data, at % (255 << 20))
        at += len(data)
else:
    db = sqlite3.connect(os.path.join(folder, "m.db"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE m (id INTEGER PRIMARY KEY, raw BLOB)")
    def write(blobs):
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO m (raw) VALUES (?)", [(b,) for b in blobs])
        db.execute("COMMIT")
waiting, flushing = [], False
def flush():
    global waiting, flushing
    flushing, batch, waiting = False, waiting, []
    write([raw for raw, _ in batch])
    for transport, control_id in (answer for _, answer in batch):
        transport.write(ACK_HEAD + control_id + b"\r\x1c\r")
class Minimal(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""
    def data_received(self, data):
        global flushing
        self.buffer += data
        while (end := self.buffer.find(b"\x1c")) >= 0:
            raw = self.buffer[self.buffer.find(b"\x0b") + 1:end]
            self.buffer = self.buffer[end + 2:]
            waiting.append((raw, (self.transport, raw.split(b"\r", 1)[0].split(b"|")[9])))
        if waiting and not flushing:  # after every connection ready in this turn has been read
            flushing = True
            asyncio.get_running_loop().call_soon(flush)
async def main():
    server = await asyncio.get_running_loop().create_server(Minimal, "127.0.0.1", int(os.environ["BENCH_PORT"]))
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


def siu_s12(tag: str, i: int, start: datetime) -> str:
    """A 6-segment SIU^S12 (MSH, SCH, PID, PV1, RGS, AIS): unique MSH-10,
    appointment and patient per ``i``; Italian names; UTF-8."""
    when = (start + timedelta(minutes=i % 5000)).strftime("%Y%m%d%H%M%S+0000")
    end = (start + timedelta(minutes=i % 5000 + 30)).strftime("%Y%m%d%H%M%S+0000")
    given, family = GIVEN[i % len(GIVEN)], FAMILY[(i // len(GIVEN)) % len(FAMILY)]
    return "\r".join([
        f"MSH|^~\\&|CUP|OSPEDALE_BENCH|ADAPTER|NOTIFY|20300101000000+0000||SIU^S12^SIU_S12|B{tag}{i:08d}|P|2.5||||||UNICODE UTF-8",
        f"SCH|PL{tag}{i}^CUP|FL{tag}{i}^OSPEDALE_BENCH|||||VIS^Visita||30|min|^^^{when}^{end}||||||||||||||Booked",
        f"PID|1||M{tag}{i}^^^OSPEDALE_BENCH^MR||{family}^{given}^^^^^L||19800101|M|||Via Perù 3^^Milano^MI^20121^IT||^PRN^CP^^39^333^{1000000 + i % 9000000}|^WPN^PH^^39^02^7654321|it",
        "PV1|1|O|AMB2^^^OSPEDALE_BENCH",
        "RGS|1|A",
        f"AIS|1||CARD01^Visita cardiologica^L|{when}|0|min|30|min",
    ]) + "\r"


class Messages:
    """An endless supply of framed, distinct SIU^S12 messages."""

    def __init__(self) -> None:
        self.tag = unique_tag()
        self.start = datetime.now(timezone.utc).replace(second=0, microsecond=0) + timedelta(days=3)
        self._counter = itertools.count()

    def text(self) -> str:
        return siu_s12(self.tag, next(self._counter), self.start)

    def framed(self) -> bytes:
        return b"\x0b" + self.text().encode("utf-8") + b"\x1c\r"


@dataclass
class Load:
    sent: int = 0
    rejected: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies, q)


async def closed_loop(port: int, connections: int, seconds: float, messages: Messages, reconnect: bool) -> Load:
    """Each connection sends a message and waits for its ACK, for ``seconds``."""
    load = Load()

    async def one() -> None:
        reader = writer = None
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            payload = messages.framed()
            started = time.perf_counter()
            if writer is None or reconnect:
                reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(payload)
            await writer.drain()
            ack = await reader.readuntil(b"\x1c\r")
            load.latencies.append(time.perf_counter() - started)
            load.sent += 1
            if b"MSA|AA|" not in ack and b"MSA|CA|" not in ack:
                load.rejected += 1
            if reconnect:
                writer.close()
                writer = None
        if writer is not None:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(connections)))
    load.seconds = time.perf_counter() - started
    return load


def measure(port: int, connections: int, messages: Messages, reconnect: bool = False, seconds: float = SECONDS) -> Load:
    asyncio.run(closed_loop(port, 1, 0.3, messages, reconnect))  # warm up
    return asyncio.run(closed_loop(port, connections, seconds, messages, reconnect))


def paced_latency(port: int, rate: float, messages: Messages, connections: int = 8) -> Load:
    from hl7.client import send_messages

    count = max(50, int(rate * SECONDS))
    batch = [messages.text() for _ in range(count)]
    started = time.perf_counter()
    results = asyncio.run(send_messages(batch, HOST, port, connections=connections, rate=rate, retries=0))
    load = Load(sent=len(results), seconds=time.perf_counter() - started)
    load.latencies = [r.latency for r in results if r.code is not None]
    load.rejected = sum(1 for r in results if not r.accepted)
    return load


def end_to_end(messages: Messages, count: int = E2E_MESSAGES, connections: int = 8) -> tuple[float, float, dict[str, int]]:
    """Fresh adapter: send ``count`` messages, wait until each is processed.
    Returns (messages/s end to end, messages/s ACKed, final status counts)."""
    with adapter_process() as adapter:
        framed = [messages.framed() for _ in range(count)]
        queue = iter(framed)

        async def sender() -> None:
            reader, writer = await asyncio.open_connection(HOST, adapter.mllp_port)
            for payload in queue:
                writer.write(payload)
                await writer.drain()
                await reader.readuntil(b"\x1c\r")
            writer.close()

        async def run() -> float:
            await asyncio.gather(*(sender() for _ in range(connections)))
            return time.perf_counter()

        with httpx.Client(base_url=adapter.base_url, headers=adapter.headers, timeout=30) as http:
            started = time.perf_counter()
            acked_at = asyncio.run(run())
            deadline = time.monotonic() + max(60.0, count / 50)
            while time.monotonic() < deadline:
                # One request a poll (the backlog); the measurement should not load what it measures.
                if http.get("/api/messages", params={"status": "stored", "limit": 1}).json()["total"] == 0:
                    counts = statuses(http)
                    if sum(counts.values()) >= count:
                        break
                time.sleep(0.05)
            finished = time.perf_counter()
            counts = statuses(http)
        return count / (finished - started), count / (acked_at - started), counts


REPORT_OBX = int(os.environ.get("BENCH_REPORT_OBX", "95000"))  # ~10 MB, the default size limit


def large_report(obx_count: int = REPORT_OBX) -> str:
    """An ORU^R01 whose OBX segments make it about 10 MB (a report with long free text,
    or an embedded document)."""
    head = [
        "MSH|^~\\&|LIS|OSPEDALE_BENCH|ADAPTER|NOTIFY|20300101000000+0000||ORU^R01^ORU_R01|BIGREPORT|P|2.5||||||UNICODE UTF-8",
        "PID|1||MREPORT^^^OSPEDALE_BENCH^MR||Rossi^Ada||19800101|F|||||^PRN^CP^^39^333^7654321|||it",
        "OBR|1|ORDREPORT|REPREPORT^LIS|GLU^Glucosio|||20300101000000|||||||||||||||20300101000000|||F",
    ]
    obx = [f"OBX|{k}|TX|NOTE^Nota||Riga di referto numero {k} con testo libero abbastanza lungo per pesare||||||F"
           for k in range(obx_count)]
    return "\r".join(head + obx) + "\r"


async def paced_one(connection, messages: Messages, rate: float, count: int) -> Load:  # noqa: ANN001
    """``count`` bookings on one open ``MLLPConnection`` at ``rate`` a second, each
    waiting for its ACK: the latencies."""
    load = Load()
    began = time.perf_counter()
    for _ in range(count):
        started = time.perf_counter()
        ack = await connection.send(messages.text().encode("utf-8"))
        load.latencies.append(time.perf_counter() - started)
        load.sent += 1
        load.rejected += b"MSA|AA|" not in ack
        await asyncio.sleep(max(0.0, began + load.sent / rate - time.perf_counter()))
    load.seconds = time.perf_counter() - began
    return load


def beside_a_large_report(messages: Messages, rate: float = 50.0, count: int = 200) -> tuple[Load, Load, float, str]:
    """Fresh adapter: ACK latency on one connection sending at ``rate`` messages a second,
    first alone, then while another connection sends a report of about 10 MB (stored,
    then parsed and mapped in the background). Returns both loads, the seconds to the
    report's ACK and the report's status once the adapter is done with it."""
    from hl7.client import MLLPConnection

    report = large_report().encode("utf-8")

    async def paced(connection: MLLPConnection) -> Load:
        return await paced_one(connection, messages, rate, count)

    with adapter_process() as adapter, httpx.Client(base_url=adapter.base_url, headers=adapter.headers, timeout=30) as http:
        async def run() -> tuple[Load, Load, float]:
            small = MLLPConnection(HOST, adapter.mllp_port)
            big = MLLPConnection(HOST, adapter.mllp_port)
            await small.open()
            await big.open()
            alone = await paced(small)

            async def send_report() -> float:
                await asyncio.sleep(0.5)
                started = time.perf_counter()
                await big.send(report)
                return time.perf_counter() - started

            beside, acked = await asyncio.gather(paced(small), send_report())
            await small.close()
            await big.close()
            return alone, beside, acked

        alone, beside, acked = asyncio.run(run())
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = http.get("/api/messages", params={"control_id": "BIGREPORT"}).json()["items"]
            if found and found[0]["status"] != "stored":
                break
            time.sleep(0.05)
    return alone, beside, acked, found[0]["status"] if found else "missing"


BUNDLES, BUNDLE_ENTRIES = 8, 100


def beside_fhir_bundles(messages: Messages, rate: float = 50.0, count: int = 250) -> tuple[Load, Load, float]:
    """Fresh adapter: ACK latency on one HL7 connection sending at ``rate`` messages a
    second, first alone, then while an EHR posts ``BUNDLES`` FHIR transaction Bundles
    of ``BUNDLE_ENTRIES`` entries one after another (each stored, answered, then its
    versions' events derived and applied in the background). Returns both loads and
    the seconds the Bundles took to be answered."""
    import threading

    from bench.fhir_common import transaction_bundle
    from hl7.client import MLLPConnection

    bundles = [transaction_bundle(BUNDLE_ENTRIES) for _ in range(BUNDLES)]
    with adapter_process() as adapter:
        def post(took: list[float]) -> None:
            headers = {**adapter.headers, "Content-Type": "application/fhir+json"}
            with httpx.Client(base_url=adapter.base_url, headers=headers, timeout=60) as http:
                began = time.perf_counter()
                for bundle in bundles:
                    http.post("/fhir/R4/", content=bundle).raise_for_status()
                took.append(time.perf_counter() - began)

        async def run() -> tuple[Load, Load, float]:
            connection = MLLPConnection(HOST, adapter.mllp_port)
            await connection.open()
            alone = await paced_one(connection, messages, rate, count)
            took: list[float] = []
            poster = threading.Thread(target=post, args=(took,))
            poster.start()
            beside = await paced_one(connection, messages, rate, count)
            await asyncio.to_thread(poster.join)
            await connection.close()
            return alone, beside, took[0] if took else float("nan")

        return asyncio.run(run())


def latencies(load: Load) -> str:
    """p50, p99 and the slowest ACK of ``load``, for a line of the report."""
    return (f"p50 {load.p(50) * 1e3:.1f} ms, p99 {load.p(99) * 1e3:.1f} ms,"
            f" max {max(load.latencies) * 1e3:.1f} ms")


def statuses(http: httpx.Client) -> dict[str, int]:
    """How many inbound messages are in each status."""
    return {s: http.get("/api/messages", params={"status": s, "limit": 1}).json()["total"]
            for s in ("stored", "processed", "duplicate", "error", "rejected")}


def durable_commit_ceiling(connections: int = 8, rounds: int = 300) -> tuple[float, float]:
    """The disk's share of the limit, measured in this run: a SQLite WAL
    ``synchronous=FULL`` commit of ``connections`` raw messages (the most that can
    wait for one commit when each connection waits for its ACK) on the same
    disk. Returns (seconds per commit, p50; the messages/s that this alone
    allows)."""
    import sqlite3
    import tempfile

    payload = Messages().framed()
    with tempfile.TemporaryDirectory(prefix="adapter-bench-fsync-") as tmp:
        db = sqlite3.connect(f"{tmp}/c.db", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE m (raw BLOB)")
        times = []
        for _ in range(rounds):
            began = time.perf_counter()
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO m VALUES (?)", [(payload,)] * connections)
            db.execute("COMMIT")
            times.append(time.perf_counter() - began)
        db.close()
    commit = percentile(times, 50)
    return commit, connections / commit


def main() -> None:
    header("MLLP: adapter (durable, SQLite WAL) vs bare asyncio ACK-only, hl7apy MLLPServer and python-hl7's MLLP server")
    print("how each was run: every server in its own process on 127.0.0.1; the client is this process\n"
          "  bare     : asyncio.start_server, readuntil + split MSH-10, canned ACK (no parsing, no storage)\n"
          "  hl7apy   : hl7apy.mllp.MLLPServer + parse_message in the handler; client reconnects per message\n"
          "  python-hl7: hl7.mllp.start_hl7_server, readmessage (parsed) + create_ack(), nothing stored\n"
          "  minimal durable: asyncio Protocol, MSH-10 split, one durable write per turn of the loop, on the loop (a\n"
          "            preallocated O_DSYNC journal, or SQLite WAL synchronous=FULL), then AA: the floor of answering\n"
          "            only once a message is on disk\n"
          "  adapter  : python -m adapter serve, SQLite WAL in a temp dir, ack_timing stored (group commit)", flush=True)
    messages = Messages()
    rows: dict[str, dict[int, Load]] = {}

    port = free_port()
    with python_server(BARE_SERVER, port):
        rows["bare asyncio (limit)"] = {c: measure(port, c, messages) for c in (1, 8)}
    port = free_port()
    with python_server(HL7APY_SERVER, port):
        rows["hl7apy MLLPServer"] = {c: measure(port, c, messages, reconnect=True) for c in (1, 8)}
    for store in ("journal", "sqlite"):
        port = free_port()
        with tempfile.TemporaryDirectory(prefix="adapter-bench-minimal-") as folder, python_server(
                MINIMAL_DURABLE_SERVER, port, env={"BENCH_STORE": store, "BENCH_DIR": folder}):
            rows[f"minimal durable {store}"] = {c: measure(port, c, messages) for c in (1, 8)}
    if (PEERS_DIR / "hl7").is_dir():
        port = free_port()
        with python_server(PYTHON_HL7_SERVER, port, peers=True):
            rows["python-hl7 MLLP server"] = {c: measure(port, c, messages) for c in (1, 8)}
    else:
        print(f"python-hl7 is not installed in {PEERS_DIR} (make install puts it there): its server is not measured")
    with adapter_process() as adapter:
        rows["adapter"] = {c: measure(adapter.mllp_port, c, messages) for c in (1, 8)}
        half = rows["adapter"][8].rate / 2
        paced = paced_latency(adapter.mllp_port, half, messages)

    print(f"\n{'server':24}{'conns':>6}{'msg/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'not AA':>8}")
    for name, by_conn in rows.items():
        for c, load in by_conn.items():
            print(f"{name:24}{c:>6}{load.rate:>10.0f}{load.p(50) * 1e3:>9.2f}{load.p(99) * 1e3:>9.2f}{load.rejected:>8}")

    bare, hl7apy, ours = rows["bare asyncio (limit)"], rows["hl7apy MLLPServer"], rows["adapter"]
    print()
    for c in (1, 8):
        print(f"ratio adapter/bare   at {c} conn: {ours[c].rate / bare[c].rate:6.3f}"
              + (f"   target >= {TARGET_OF_BARE:.2f}: {verdict(ours[c].rate / bare[c].rate, TARGET_OF_BARE)}" if c == 8 else ""))
        print(f"ratio adapter/hl7apy at {c} conn: {ours[c].rate / hl7apy[c].rate:6.1f}"
              + (f"   target >= {TARGET_OF_HL7APY:.0f}: {verdict(ours[c].rate / hl7apy[c].rate, TARGET_OF_HL7APY)}" if c == 8 else ""))
        if "python-hl7 MLLP server" in rows:
            peer = rows["python-hl7 MLLP server"][c]
            print(f"ratio adapter/python-hl7 MLLP server at {c} conn: {ours[c].rate / peer.rate:6.2f}"
                  f"   (python-hl7: {peer.rate / bare[c].rate:.3f} of bare; it parses and answers, stores nothing)")
    for store in ("journal", "sqlite"):
        floor = rows[f"minimal durable {store}"]
        print(f"minimal durable server ({store}: ACK after a durable write, nothing else) at 8 conn:"
              f" {floor[8].rate / bare[8].rate:.3f} of bare; the adapter is {ours[8].rate / floor[8].rate:.2f} of it")
    print(f"adapter at half its max rate ({half:.0f} msg/s offered, 8 conn, send_messages(rate=...)): "
          f"{paced.rate:.0f} msg/s, p50 {paced.p(50) * 1e3:.2f} ms, p99 {paced.p(99) * 1e3:.2f} ms"
          f"   target p99 <= {TARGET_P99_S * 1e3:.0f} ms: {verdict(paced.p(99), TARGET_P99_S, higher_is_better=False)}"
          f"   (not AA: {paced.rejected})")

    commit, ceiling = durable_commit_ceiling()
    print(f"the disk alone: an fsync'd SQLite commit of 8 messages takes {commit * 1e3:.2f} ms (p50) here, so 8 connections"
          f" that each wait for their ACK can get at most {ceiling:.0f} msg/s = {ceiling / bare[8].rate:.2f} of the bare limit"
          " from durable storage alone, before any parsing or sealing")

    alone, beside, report_acked, report_status = beside_a_large_report(messages)
    print(f"one connection at 50 msg/s, ACK latency alone: {latencies(alone)}; while another connection sends a"
          f" {len(large_report()) / 1e6:.1f} MB ORU^R01 ({REPORT_OBX} OBX, ACKed in {report_acked * 1e3:.0f} ms, then"
          f" parsed and mapped in the background): {latencies(beside)}"
          f"   (not AA: {alone.rejected + beside.rejected}; the report ended {report_status})", flush=True)

    alone, beside, bundles_took = beside_fhir_bundles(messages)
    print(f"one connection at 50 msg/s, ACK latency alone: {latencies(alone)}; while an EHR posts {BUNDLES} FHIR"
          f" transaction Bundles of {BUNDLE_ENTRIES} entries (answered in {bundles_took:.1f} s, their events derived"
          f" and applied in the background): {latencies(beside)}   (not AA: {alone.rejected + beside.rejected})",
          flush=True)

    e2e, acked, counts = end_to_end(messages)
    print(f"end to end ({E2E_MESSAGES} messages, 8 conn, fresh adapter, until /api/messages shows none 'stored'): "
          f"{e2e:.0f} msg/s mapped to events (ACKed at {acked:.0f} msg/s)   target >= {TARGET_E2E:.0f}: "
          f"{verdict(e2e, TARGET_E2E)}   statuses {counts}", flush=True)


if __name__ == "__main__":
    main()
