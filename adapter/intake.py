"""HL7 v2 intake: make a message safe, acknowledge it honestly, process it after.

The ACK path does the least that makes the message safe (DESIGN.md "How an ACK
stays honest and fast"): read MSH with a plain split, seal and store the raw
bytes, commit, answer. Commits from many connections are grouped: one writer
drains everything that arrived in the same moment into one transaction, so the
cost of a durable write is shared. Mapping to events happens afterwards, from
the stored message, so a crash between ACK and mapping loses nothing: rows left
``stored`` are picked up at the next start.

A sending facility may ask for the ACK after processing instead
(``ack: processed`` in config/facilities.yaml): AE/AR then reflect the mapping.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import Counter, Gauge
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from adapter.clock import Clock
from adapter.app_acks import queue_application_ack, verdict, wants_accept_ack, wants_application_ack
from adapter.events import AnyEvent
from adapter.errors import UnknownAppointment
from adapter.db import StatementConnection, insert_rows_with, placeholder, raw_transaction, read_transaction, transaction
from adapter.metrics import ACK_LATENCY, HL7_LAST_STORED, MESSAGES_RECEIVED, STORE_BATCH, STORE_SECONDS
from adapter.models import InboundMessage, InboundRaw
from adapter.pipeline import Pipeline
from adapter.storage_full import NOT_STORED, StorageFull, is_storage_full, space_watch
from adapter.stored_work import chunk_for, process_all, stored_ids, take_turn_applying
from adapter.waiting import Waiting
from compliance.crypto import Vault
from hl7.ack import AckCode, AckError, build_ack, build_reject_for_unreadable, new_control_id
from hl7.batch import batch_ack, is_batch, messages_of
from hl7.errors import HL7Error
from hl7.facilities import FacilityConfig
from hl7.header import MessageHeader, decode, read_header
from hl7.mapping import map_message, refusal
from hl7.mllp import PEER, Peer

log = logging.getLogger(__name__)

SYSTEM = "system"
# What replay answers for a message retention has emptied: nothing is left to map.
PURGED = "not replayable: its raw message was deleted after retention; ask the sender to send it again"
ERASED = ("not replayable: its raw message was erased with a patient it concerned (GDPR art. 17);"
          " the erasure stands, so it is not to be sent again")
_PROCESSABLE = ("stored", "error", "rejected")  # replay takes errors and rejections again
_MSA = re.compile(rb"MSA.(\w\w)")
_INBOUND = InboundMessage.__table__
_RAW = InboundRaw.__table__
# Built once: under a steady feed a chunk is one message, and building these took
# about as much as running them.
_STORED_RAW = (
    select(_INBOUND.c.id, _RAW.c.raw_enc, _INBOUND.c.received_at)
    .join(_RAW, _RAW.c.message_id == _INBOUND.c.id)
    .where(_INBOUND.c.id.in_(bindparam("ids", expanding=True)), _INBOUND.c.status.in_(bindparam("statuses", expanding=True)))
    .order_by(_INBOUND.c.id)
)
_RAW_SIZES = select(_RAW.c.message_id, func.length(_RAW.c.raw_enc)).where(
    _RAW.c.message_id.in_(bindparam("ids", expanding=True)))
# Messages mapped in one transaction at most, once the feed has been quiet for twice
# as long as they take (``chunk_for``; ~0.7 ms each, so 180 ms): each transaction has a
# fixed cost (~8 statements and a commit). In process, 1,300 bookings/s in chunks of 32,
# 1,430/s in chunks of 128.
MAX_CHUNK = 128
# Raw messages mapped together at most (sealed size): 32 bookings take ~25 kB, a report
# with an embedded document can take 10 MB, and a chunk is held decrypted and parsed.
CHUNK_BYTES = 16 * 1024 * 1024
_STILL_IN = (
    select(_INBOUND.c.id)
    .where(_INBOUND.c.id.in_(bindparam("ids", expanding=True)), _INBOUND.c.status.in_(bindparam("statuses", expanding=True)))
    .with_for_update()
)


# The series the ACK path adds to, looked up once (``labels()`` takes a lock and
# builds a key on every call).
_HL7_ACK_LATENCY = ACK_LATENCY.labels("hl7")
_STORE_LOCK_WAIT, _STORE_WRITE = STORE_SECONDS.labels("lock_wait"), STORE_SECONDS.labels("write")


@functools.cache
def _received(outcome: str) -> Counter:
    return MESSAGES_RECEIVED.labels("hl7", outcome)


def ack_code(ack: bytes) -> str:
    """MSA-1 of an ACK we built, for metrics."""
    match = _MSA.search(ack)
    return match.group(1).decode() if match else "none"


@dataclass(frozen=True)
class Stored:
    message_id: int
    duplicate: bool
    status: str
    error: str | None


@dataclass(frozen=True)
class _Mapped:
    """A stored message read and mapped, before its events are applied: its events,
    or the reason it cannot be (then ``events`` is empty)."""

    message_id: int
    header: MessageHeader | None
    events: list[AnyEvent]
    failure: Exception | None


@dataclass
class _Pending:
    header: MessageHeader
    raw: bytes
    future: asyncio.Future[Stored]


# The ACK path's write on PostgreSQL: one statement, its own transaction, one round
# trip. Each (sender, control id) comes once, with how many times the batch holds it
# (``copies``) and its first copy's sealed bytes. A new one is inserted counting its
# copies after the first as duplicates; one stored before is counted ``copies`` more
# (ON CONFLICT DO UPDATE locks it even when another transaction committed it after
# this statement began). So a row came back new exactly when its ``duplicates`` is
# ``copies - 1``: an existing row's is at least ``copies``. Only new rows get their
# bytes. Arrays, not VALUES lists: one text for every batch size, prepared once.
_STORE_ON_POSTGRESQL = """
WITH batch AS (
    SELECT * FROM unnest(%s::varchar[], %s::varchar[], %s::varchar[], %s::integer[], %s::bytea[])
        WITH ORDINALITY AS b(sender, control_id, message_type, copies, raw_enc, position)
), kept AS (
    INSERT INTO inbound_message AS m (source, sender, control_id, message_type, received_at, status, duplicates)
    SELECT 'hl7', sender, control_id, message_type, %s, 'stored', copies - 1 FROM batch ORDER BY position
    ON CONFLICT (source, sender, control_id) DO UPDATE SET duplicates = m.duplicates + excluded.duplicates + 1
    RETURNING m.id, m.sender, m.control_id, m.status, m.error, m.duplicates
), raws AS (
    INSERT INTO inbound_raw (message_id, raw_enc)
    SELECT kept.id, batch.raw_enc FROM kept JOIN batch USING (sender, control_id)
    WHERE kept.duplicates = batch.copies - 1
)
SELECT kept.id, kept.sender, kept.control_id, kept.status, kept.error, kept.duplicates = batch.copies - 1
FROM kept JOIN batch USING (sender, control_id)
"""


def _store_thread() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="hl7-store")


# The longest a write of the ACK path may keep the event loop (and so every other
# connection and HTTP request) waiting; a slower disk's writes go to the store thread.
INLINE_WRITE_S = 0.002


class GroupCommitWriter:
    """Stores raw messages, many per transaction, one at a time per caller.

    Senders that each wait for their ACK send their next message a little apart
    (their ACKs leave one after another), so a transaction started the moment the
    first arrives holds only some of them, and the rest pay a commit each. When the
    last transaction held more messages than are queued, the next waits up to
    ``linger_s`` (1 ms) for as many: at 8 connections, 1.57 times the messages a
    second with mapping off, 1.16 times with it. After a transaction of one (a single
    sender, a quiet feed) nothing waits.
    """

    def __init__(self, sessions: sessionmaker[Session], vault: Vault, clock: Clock, *, max_batch: int = 256, linger_s: float = 0.001) -> None:
        self.sessions = sessions
        self.vault = vault
        self.clock = clock
        self.max_batch = max_batch
        self.linger_s = linger_s
        self._last = 1
        self._want = 0
        self._enough: asyncio.Future[None] | None = None
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        # A thread of its own: in the event loop's shared pool an ACK's commit
        # would queue behind background work waiting for the write lock.
        self._executor = _store_thread()
        self.engine = sessions.kw["bind"]
        p = placeholder(self.engine.dialect)
        self._count_duplicate_sql = (
            "UPDATE inbound_message SET duplicates = duplicates + 1"
            f" WHERE source = 'hl7' AND sender = {p} AND control_id = {p} RETURNING id, status, error"
        )
        # Messages waiting to be stored: background work (mapping, sending)
        # gives way to them, so ACKs go first.
        self.waiting = Waiting()
        # On SQLite a write that can start at once runs on the event loop's own
        # thread, while the last one was quick: handing it to the store thread and
        # back costs more than the write (the floor servers of bench/mllp.py: 0.30
        # of the bare server committing on the loop, 0.20 from a thread). A write
        # that would wait (another transaction holds the lock), or a slow disk,
        # goes to the store thread, so the loop never waits on a lock or long on a
        # sync. On PostgreSQL every commit is a network round trip: the thread.
        self._may_inline = self._inline = self.engine.dialect.name == "sqlite"
        # The connection those writes use, kept: taking one from the pool on the loop
        # could wait for HTTP requests and background work to give one back.
        self._loop_connection: Any = None
        self._statements = StatementConnection(self.engine) if self.engine.dialect.name == "postgresql" else None
        # Writes refused for want of space: answered "not stored: the database is full",
        # logged once per episode.
        self.space = space_watch(self.engine)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        # Its thread ends; a later start gets a new one (made when first used).
        self._executor.shutdown(wait=False)
        self._close_loop_connection()
        self._executor = _store_thread()
        if self._statements is not None:
            self._statements.close()

    async def store(self, header: MessageHeader, raw: bytes) -> Stored:
        self.start()
        future: asyncio.Future[Stored] = asyncio.get_running_loop().create_future()
        self.waiting.begin()
        self._queue.put_nowait(_Pending(header, raw, future))
        if self._enough is not None and self._queue.qsize() >= self._want and not self._enough.done():
            self._enough.set_result(None)
        return await future

    async def _gather(self) -> list[_Pending]:
        """The next batch: what is queued; when the last batch was larger, what
        arrives within ``linger_s`` too, until it is as large."""
        first = await self._queue.get()
        if self._queue.qsize() + 1 < self._last and self.linger_s > 0:
            self._want = self._last - 1
            self._enough = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(self.linger_s):
                    await self._enough
            except TimeoutError:
                pass
            finally:
                self._enough = None
        batch = [first]
        while len(batch) < self.max_batch and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        self._last = len(batch)
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._gather()
            items = [(p.header, p.raw) for p in batch]
            results: list[Stored | BaseException]
            try:
                if self._inline and self._loop_connection is None:  # the pool may make one wait: not on the loop
                    self._loop_connection = await asyncio.get_running_loop().run_in_executor(
                        self._executor, self.engine.raw_connection)
                written = self._write_on_loop(items) if self._inline else None
                if written is None:
                    written = await asyncio.get_running_loop().run_in_executor(self._executor, self.write, items)
                results = list(written)
            except Exception as exc:  # noqa: BLE001 - nothing is acknowledged when the write fails
                if self.space.refused(exc):  # no message's fault: each alone would be refused too
                    results = [StorageFull(NOT_STORED)] * len(batch)
                elif len(batch) > 1:  # each then alone: one message the database refuses fails alone
                    results = [await self._write_alone(pending) for pending in batch]
                else:
                    log.exception("storing an inbound message failed")
                    results = [RuntimeError("the message could not be stored")]
            for pending, result in zip(batch, results, strict=True):
                if not pending.future.done():
                    if isinstance(result, BaseException):
                        pending.future.set_exception(result)
                    else:
                        pending.future.set_result(result)
            self.waiting.end(len(batch))

    def _write_on_loop(self, items: list[tuple[MessageHeader, bytes]]) -> list[Stored] | None:
        """``write`` on the event loop's thread, on the connection kept for it, if it can
        start at once (else None)."""
        try:
            return self.write(items, wait=False, connection=self._loop_connection)
        except Exception:
            self._close_loop_connection()  # the next gets a fresh one
            raise

    def _close_loop_connection(self) -> None:
        if self._loop_connection is not None:
            connection, self._loop_connection = self._loop_connection, None
            connection.close()

    async def _write_alone(self, pending: _Pending) -> Stored | BaseException:
        try:
            return (await asyncio.get_running_loop().run_in_executor(
                self._executor, self.write, [(pending.header, pending.raw)]))[0]
        except Exception as exc:  # noqa: BLE001 - answered AE: the sender keeps it and retries
            if self.space.refused(exc):
                return StorageFull(NOT_STORED)
            log.exception("storing an inbound message failed")
            return RuntimeError("the message could not be stored")

    def write(self, items: list[tuple[MessageHeader, bytes]], *, wait: bool = True,
              connection: Any = None) -> list[Stored] | None:
        """Store ``items`` in one transaction with one multi-row
        ``INSERT ... ON CONFLICT DO NOTHING RETURNING``: a row comes back for each
        new message, whose sealed bytes then go to ``inbound_raw``. A retransmission
        (same source, sender and control id, also twice in one batch) comes back
        without one: it is only counted, and answered from the stored original.
        Statements go to the DB-API cursor: at thousands of messages a second
        SQLAlchemy's own work per statement costs more than the insert. On
        PostgreSQL the same in one statement (``_STORE_ON_POSTGRESQL``).

        Not ``wait``: None, nothing stored, unless the write can start at once
        (the write lock free, the system key cached). On ``connection``, if given
        (see :func:`adapter.db.raw_transaction`)."""
        sealed = [self.vault.encrypt_if_cached(SYSTEM, raw) for _, raw in items]
        if None in sealed:  # the system key is read (once, then cached) in a transaction
            if not wait:
                return None
            with transaction(self.sessions) as session:
                sealed = [self.vault.encrypt(session, SYSTEM, raw) for _, raw in items]
        received_at = self.clock.now()
        rows = [
            {"source": "hl7", "sender": header.sender[:200], "control_id": header.control_id[:200],
             "message_type": f"{header.message_code}^{header.trigger_event}"[:40], "received_at": received_at,
             "status": "stored", "duplicates": 0}
            for header, _ in items
        ]
        if self._statements is not None:  # PostgreSQL
            STORE_BATCH.observe(len(items))
            return self._write_postgresql(self._statements, rows, sealed)
        began = time.perf_counter()
        with raw_transaction(self.engine, priority=True, wait=wait, connection=connection) as cursor:  # an ACK waits on it
            if cursor is None:
                return None  # not counted: the store thread writes the batch, and counts it
            STORE_BATCH.observe(len(items))
            locked = time.perf_counter()
            _STORE_LOCK_WAIT.observe(locked - began)
            fresh = {(sender, control_id): message_id for message_id, sender, control_id in insert_rows_with(
                cursor, self.engine.dialect, _INBOUND, rows, returning=("id", "sender", "control_id"),
                on_conflict_do_nothing=True)}
            out, raws = [], []
            for row, blob in zip(rows, sealed, strict=True):
                sender, control_id = row["sender"], row["control_id"]
                message_id = fresh.pop((sender, control_id), None)  # the first of a twice-sent id is the new one
                if message_id is None:
                    cursor.execute(self._count_duplicate_sql, (sender, control_id))
                    original_id, status, error = cursor.fetchone()
                    out.append(Stored(original_id, True, status, error))
                else:
                    out.append(Stored(message_id, False, "stored", None))
                    raws.append({"message_id": message_id, "raw_enc": blob})
            insert_rows_with(cursor, self.engine.dialect, _RAW, raws)
        if raws:  # new rows took space: a full database's episode, if any, is over
            self.space.writable()
        took = time.perf_counter() - locked
        _STORE_WRITE.observe(took)
        self._inline = self._may_inline and took < INLINE_WRITE_S
        return out

    def _write_postgresql(self, statements: StatementConnection, rows: list[dict[str, Any]],
                          sealed: list[bytes]) -> list[Stored]:
        """:meth:`write` on PostgreSQL: ``_STORE_ON_POSTGRESQL``, committed when it returns.
        The multi-row INSERT, an UPDATE per retransmission, the INSERT of the bytes and
        the COMMIT were a round trip each, and the pool's ping another."""
        first: dict[tuple[str, str], int] = {}  # each identity's first row
        copies: dict[tuple[str, str], int] = {}
        for index, row in enumerate(rows):
            key = (row["sender"], row["control_id"])
            first.setdefault(key, index)
            copies[key] = copies.get(key, 0) + 1
        unique = [rows[index] for index in first.values()]
        began = time.perf_counter()
        kept = {(sender, control_id): (message_id, status, error, new)
                for message_id, sender, control_id, status, error, new in statements.execute(_STORE_ON_POSTGRESQL, (
                    [row["sender"] for row in unique], [row["control_id"] for row in unique],
                    [row["message_type"] for row in unique], [copies[key] for key in first],
                    [sealed[index] for index in first.values()], rows[0]["received_at"]))}
        _STORE_WRITE.observe(time.perf_counter() - began)  # no lock to wait for, as on SQLite
        out = []
        for index, row in enumerate(rows):
            key = (row["sender"], row["control_id"])
            message_id, status, error, new = kept[key]
            out.append(Stored(message_id, not (new and first[key] == index), status, error))
        if any(not stored.duplicate for stored in out):
            self.space.writable()
        return out


def _unknown_appointment_reason(failure: UnknownAppointment) -> str:
    """The error store's reason (and an AE's) for an SIU without PID about an appointment not
    stored: which appointment, and what to do. The appointment first: an ERR holds 200 characters."""
    return (f"no PID, and appointment {failure.ref} is not known here (never booked through the adapter): "
            "replay it (hl7 replay) once its booking has arrived")


def _erased_appointment_reason(failure: UnknownAppointment) -> str:
    """The reason kept for an SIU without PID about an appointment erased with its patient
    (art. 17; :meth:`ComplianceGate.appointment_erased`): no booking will come to replay it after."""
    return (f"no PID, and appointment {failure.ref} is no longer here: its patient was erased (GDPR art. 17); "
            "nothing to apply, do not replay it")


def _header_of(raw: bytes) -> MessageHeader | HL7Error:
    """The message's header, or why it cannot be read (answered as such)."""
    try:
        return read_header(raw)
    except HL7Error as exc:
        return exc


class HL7Intake:
    """The handler behind MLLP and ``POST /hl7/v2``: raw bytes in, ACK bytes out."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        vault: Vault,
        pipeline: Pipeline,
        facilities: FacilityConfig,
        clock: Clock,
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        self.sessions = sessions
        self.vault = vault
        self.pipeline = pipeline
        self.facilities = facilities
        self.clock = clock
        self.writer = GroupCommitWriter(sessions, vault, clock)
        self.on_stored = on_stored or (lambda: None)
        self.processed_event = asyncio.Event()
        self._seconds_each = 0.001  # applying one message, timed on each chunk (chunk_for)
        self._last_stored: dict[str, Gauge] = {}

    async def handle(self, raw: bytes) -> bytes:
        if not raw.startswith(b"MSH") and is_batch(raw):  # a batch: rare, so tested second
            return await self._handle_batch(raw)
        return await self._handle_one(raw, _header_of(raw))

    async def _handle_one(self, raw: bytes, header: MessageHeader | HL7Error) -> bytes:
        began = time.perf_counter()
        ack = await self._handle(raw, header)
        _HL7_ACK_LATENCY.observe(time.perf_counter() - began)
        _received(ack_code(ack)).inc()
        return ack

    async def _handle_batch(self, raw: bytes) -> bytes:
        """A batch (``[FHS] BHS {MSH...} BTS [FTS]``, HL7 v2.5 §2.10.3): each message
        handled in order as if it came alone (stored, checked, acknowledged), then one
        answer holding every message's ACK. Messages that want no ACK (enhanced mode,
        MSH-15 NE) have none in it."""
        messages = [(message, _header_of(message)) for message in messages_of(raw)]
        if self._answered_after_processing([header for _, header in messages]):  # one at a time, in order
            answers = [await self._handle_one(*message) for message in messages]
        else:  # queued in order for storage, so they share group commits and keep their order
            answers = await asyncio.gather(*(self._handle_one(*message) for message in messages))
        return batch_ack(raw, [ack for ack in answers if ack], now=self.clock.now().strftime("%Y%m%d%H%M%S%z"),
                         control_id=new_control_id())

    def _answered_after_processing(self, headers: list[MessageHeader | HL7Error]) -> bool:
        """Whether a message among those with ``headers`` is answered only once processed
        (original mode, a facility whose ``ack_timing`` is ``processed``): handled side by
        side, such messages would be processed side by side, not in the batch's order."""
        return any(isinstance(header, MessageHeader) and not header.enhanced_mode
                   and self.facilities.for_facility(header.facility).ack_timing == "processed" for header in headers)

    async def _handle(self, raw: bytes, header: MessageHeader | HL7Error) -> bytes:
        if isinstance(header, HL7Error):
            return build_reject_for_unreadable(raw, header.reason, code=header.code)
        if not header.control_id:
            return build_ack(header, AckCode.AR, error=AckError("101", "MSH-10 (message control id) is empty"))
        accept, error_code, reject = (
            (AckCode.CA, AckCode.CE, AckCode.CR) if header.enhanced_mode else (AckCode.AA, AckCode.AE, AckCode.AR))
        facility = self.facilities.for_facility(header.facility)
        if facility.senders and not facility.admits(peer := PEER.get()):
            await self._sender_refused(header, peer)
            return build_ack(header, reject, error=AckError(
                "207", f"messages of sending facility {header.facility[:100] or '(empty MSH-4)'} are not taken "
                       "from this connection: its address, client certificate or token is not among the facility's "
                       "senders"))
        if (header.processing_id or "P") not in facility.processing_ids:
            log.warning("HL7 message from %s refused: processing id %r (MSH-11) is not taken here",
                        header.sender[:100], header.processing_id[:20])
            return build_ack(header, reject, error=AckError(
                "202", f"processing id {header.processing_id[:20]} (MSH-11) is not taken here: only "
                       f"{', '.join(facility.processing_ids)}"))
        refused = refusal(header.message_code, header.trigger_event, header.version)
        if refused is not None:  # a type or version not handled at all: not stored
            return build_ack(header, reject, error=AckError.from_exception(refused))
        try:
            stored = await self.writer.store(header, raw)
            self._stored_from(header.facility).set(time.time())
        except Exception as exc:
            # Not stored, so not accepted: the sender keeps it and retries.
            if header.enhanced_mode and not wants_accept_ack(header.accept_ack_type, stored=False):
                return b""  # MSH-15 NE/SU: the sender asked for no commit ACK on failure
            why = f"message could not be stored: {NOT_STORED}; resend it later" if isinstance(exc, StorageFull) \
                else "message could not be stored; resend it"
            return build_ack(header, error_code, error=AckError("207", why))
        if header.enhanced_mode or facility.ack_timing == "stored":
            if not stored.duplicate:
                self.on_stored()
            if header.enhanced_mode and not wants_accept_ack(header.accept_ack_type, stored=True):
                return b""  # MSH-15 NE/ER: no commit ACK wanted on success
            return build_ack(header, accept)
        # ACK after processing: AE/AR carry the mapping's verdict.
        code, error = await asyncio.to_thread(self._processed_verdict, stored)
        return build_ack(header, code, error=error)

    async def _sender_refused(self, header: MessageHeader, peer: Peer | None) -> None:
        """Log and audit a sender refused for a facility, once per connection and facility
        (a refused peer resending in a loop is one event, not one a message)."""
        if peer is not None:
            if header.facility in peer.refused:
                return
            peer.refused.add(header.facility)
        where = peer.describe() if peer else "an unknown peer"
        log.warning("HL7 messages of sending facility %s refused from %s: not among its senders",
                    header.facility[:100], where[:300])

        def audit() -> None:
            with transaction(self.sessions) as session:
                self.pipeline.gate.sender_refused(session, header.facility[:100], where[:300], now=self.clock.now())

        await asyncio.to_thread(audit)

    def _stored_from(self, facility: str) -> Gauge:
        """The gauge of when a message of ``facility`` was last stored: its own when
        configured, else ``other`` (a label per MSH-4 anyone writes would grow without end)."""
        name = facility if facility in self.facilities.facilities and facility != "default" else "other"
        gauge = self._last_stored.get(name)
        if gauge is None:  # made at the first message, not at 0 before it
            gauge = self._last_stored[name] = HL7_LAST_STORED.labels(name)
        return gauge

    def _processed_verdict(self, stored: Stored) -> tuple[AckCode, AckError | None]:
        """Process the message unless that was done (a retransmission of one still
        waiting, after a crash or while another connection's copy is mapped, is
        processed or waited for now), then its verdict."""
        if stored.status == "stored":
            self.process(stored.message_id)
        with read_transaction(self.sessions) as session:
            row = session.execute(select(_INBOUND.c.status, _INBOUND.c.error, _INBOUND.c.error_code)
                                  .where(_INBOUND.c.id == stored.message_id)).first()
        return verdict(*row) if row else verdict("error", "the stored message is missing", None)

    # -- processing, after the ACK -------------------------------------------------

    def pending_ids(self, limit: int = 500) -> list[int]:
        return stored_ids(self.sessions, "hl7", limit)

    def process(self, message_id: int) -> str:
        """Map one stored message and apply its events, in one transaction with
        marking it processed. Returns the final status."""
        mapped = self._map_stored([message_id], _PROCESSABLE)
        with transaction(self.sessions) as session:
            outcome = self._apply(session, mapped, _PROCESSABLE, self.clock.now())
            if message_id in outcome:
                return outcome[message_id]
            status = session.scalar(select(_INBOUND.c.status).where(_INBOUND.c.id == message_id))
            return status or "missing"

    def process_batch(self, message_ids: list[int], *, budget_s: float = 0.1, chunk: int = MAX_CHUNK,
                      quiet_s: Callable[[], float] | None = None) -> int:
        """Process stored messages a chunk at a time, each chunk mapped first and then
        applied in a transaction of its own (``Pipeline.handle_many``, each message all
        or nothing), until ``budget_s`` is spent or a message arrives that waits for its
        ACK. With SQLite an ACK waits for the transaction in progress, so a chunk is as
        many messages (``chunk`` at most, one while a message waits) as take half the
        time the feeds have been quiet (``quiet_s()``, by default this feed's;
        :func:`chunk_for`, timed on the chunks before). A chunk also stops before its raw messages pass
        ``CHUNK_BYTES`` together (large reports are mapped a few at a time, so memory
        stays bounded). Returns how many ids were handled."""
        quiet_s = quiet_s or self.writer.waiting.quiet_seconds
        done, began = 0, time.perf_counter()
        while done < len(message_ids):
            ids = self._within_bytes(message_ids[done : done + chunk_for(quiet_s(), self._seconds_each, chunk)])
            mapped = self._map_stored(ids, ("stored",))
            applying = time.perf_counter()
            with transaction(self.sessions) as session:
                self._apply(session, mapped, ("stored",), self.clock.now())
            self._seconds_each = (time.perf_counter() - applying) / len(ids)
            done += len(ids)
            if time.perf_counter() - began > budget_s or not self.writer.waiting.idle.is_set():
                break
        return done

    def _within_bytes(self, ids: list[int]) -> list[int]:
        """The longest start of ``ids`` (one at least) whose sealed raw messages take
        ``CHUNK_BYTES`` or less together."""
        if len(ids) < 2:
            return ids
        with read_transaction(self.sessions) as session:
            sizes = dict(session.execute(_RAW_SIZES, {"ids": ids}).all())
        total = 0
        for count, message_id in enumerate(ids):
            total += sizes.get(message_id, 0)
            if total > CHUNK_BYTES and count:
                return ids[:count]
        return ids

    def _map_stored(self, ids: list[int], statuses: tuple[str, ...]) -> list[_Mapped]:
        """Read the messages of ``ids`` that are in ``statuses`` and map each to events,
        oldest first, without the write lock: an ACK never waits while a message is
        parsed (a report of thousands of OBX segments takes a noticeable time). A
        message that cannot be read or mapped comes back with its failure. Messages
        purged after retention are left out: there is nothing to map."""
        with read_transaction(self.sessions) as session:
            rows = session.execute(_STORED_RAW, {"ids": ids, "statuses": statuses}).all()
            read: list[tuple[int, bytes | Exception, datetime]] = []
            for row in rows:
                try:
                    read.append((row.id, self.vault.decrypt(session, row.raw_enc), row.received_at))
                except Exception as exc:  # noqa: BLE001 - recorded with the message, never lost
                    read.append((row.id, exc, row.received_at))
        mapped = []
        for message_id, raw, received_at in read:
            if isinstance(raw, Exception):  # could not be decrypted
                mapped.append(_Mapped(message_id, None, [], raw))
                continue
            header = None
            try:
                header = read_header(raw)
                events = map_message(decode(raw, header), self.facilities, received_at=received_at,
                                     message_id=message_id)
            except Exception as exc:  # noqa: BLE001 - recorded with the message, never lost
                mapped.append(_Mapped(message_id, header, [], exc))
            else:
                mapped.append(_Mapped(message_id, header, events, None))
        return mapped

    def _apply(self, session: Session, mapped: list[_Mapped], statuses: tuple[str, ...], now: datetime) -> dict[int, str]:
        """Apply the events of the mapped messages still in ``statuses`` (locked and read
        again: a serve process and a worker may reach the same message; the second
        waits, then finds it processed) in order; a message that could not be mapped
        ends here with its reason. Records each outcome (one UPDATE for all) and
        returns each message's final status."""
        if not mapped:
            return {}
        take_turn_applying(session)
        current = set(session.scalars(_STILL_IN, {"ids": [m.message_id for m in mapped], "statuses": statuses}))
        mapped = [m for m in mapped if m.message_id in current]
        ready = [m for m in mapped if m.failure is None]
        settled = [self._settle(session, m.message_id, m.header, m.failure, now) for m in mapped if m.failure is not None]
        outcomes = self.pipeline.handle_many(session, [m.events for m in ready], now=now)
        for m, outcome in zip(ready, outcomes, strict=True):
            settled.append(self._settle(session, m.message_id, m.header, outcome if isinstance(outcome, Exception) else None, now))
        if settled:
            session.execute(
                update(_INBOUND).where(_INBOUND.c.id == bindparam("message_id"))
                .values(status=bindparam("status"), error=bindparam("error"), error_code=bindparam("error_code"),
                        processed_at=bindparam("at")),
                settled,
            )
        return {row["message_id"]: row["status"] for row in settled}

    def _settle(
        self, session: Session, message_id: int, header: MessageHeader | None, failure: Exception | None, now: datetime
    ) -> dict[str, Any]:
        """The message's outcome as a row for the status UPDATE; owes the sender
        an application ACK where it asked for one."""
        error_code = None
        if is_storage_full(failure):  # not the message's: it stays stored, to be processed once there is room
            raise StorageFull(NOT_STORED) from failure
        if isinstance(failure, HL7Error):  # unsupported, undecodable: rejected; unmappable: error
            status, error, error_code = "rejected" if failure.rejects else "error", failure.reason[:500], failure.code
        elif isinstance(failure, UnknownAppointment) and self.pipeline.gate.appointment_erased(session, failure.ref):
            status, error = "ignored", _erased_appointment_reason(failure)[:500]  # nothing to fix: not an error
        elif isinstance(failure, UnknownAppointment):  # table 0357 204: unknown key identifier
            status, error, error_code = "error", _unknown_appointment_reason(failure)[:500], "204"
        elif failure is not None:
            log.error("processing inbound message %s failed", message_id, exc_info=failure)
            status, error = "error", f"internal error: {type(failure).__name__}"
        else:
            status, error = "processed", None
        if header is not None and header.enhanced_mode and wants_application_ack(header.application_ack_type, status):
            queue_application_ack(session, message_id, now=now, outcome=(status, error, error_code))
        return {"message_id": message_id, "status": status, "error": error, "error_code": error_code, "at": now}

    def process_pending(self, *, quiet_s: Callable[[], float] | None = None) -> int:
        """Process everything stored and not yet processed, oldest first; messages
        waiting for their ACK go first."""
        return process_all(self.pending_ids, lambda ids: self.process_batch(ids, quiet_s=quiet_s),
                           lambda took: self.writer.waiting.wait_quiet(after=took))

    def replay(self, message_ids: list[int]) -> dict[int, str]:
        """Process error-store messages again (after a config fix). A message whose raw
        bytes are gone cannot be: it is answered ``PURGED`` (deleted after retention) or
        ``ERASED`` (deleted with a patient it concerned)."""
        gone = self.without_raw(message_ids)
        return {message_id: (ERASED if gone[message_id] else PURGED) if message_id in gone
                else self.process(message_id) for message_id in message_ids}

    def without_raw(self, message_ids: list[int]) -> dict[int, bool]:
        """The HL7 messages among ``message_ids`` whose raw bytes were deleted, each with
        whether erasure (rather than retention) deleted them."""
        with read_transaction(self.sessions) as session:
            return {message_id: erased_at is not None for message_id, erased_at in session.execute(
                select(_INBOUND.c.id, _INBOUND.c.raw_erased_at).where(
                    _INBOUND.c.id.in_(message_ids), _INBOUND.c.source == "hl7",
                    ~select(_RAW.c.message_id).where(_RAW.c.message_id == _INBOUND.c.id).exists()))}
