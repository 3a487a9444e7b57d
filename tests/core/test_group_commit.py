"""The ACK path's group commit: messages from many connections share one durable
transaction. When the last transaction held several messages, the next waits a
moment (``linger_s``) for as many: senders that each wait for their ACK send again
a little apart, and a transaction (an fsync) per straggler cost a third of the
throughput at 8 connections."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from sqlalchemy import select, update

from adapter.db import read_transaction, transaction
from adapter.models import InboundMessage, InboundRaw
from hl7.header import read_header
from tests.harness import migrated_container, settings_for, write_lock_held


def siu(control_id: str) -> bytes:
    return (f"MSH|^~\\&|CUP|OSP|ADAPTER|NOTIFY|20260101000000||SIU^S12^SIU_S12|{control_id}|P|2.5\r"
            "SCH|P1^CUP|F1^OSP|||||VIS^Visita||30|min|^^^20270101090000\r"
            "PID|1||M1^^^OSP^MR||Rossi^Ada||19800101|F\r").encode()


async def two_waves(writer, gap_s: float, *, then=lambda: None) -> None:
    """Four messages at once; then one, and three more ``gap_s`` later; ``then()``
    before the writer stops."""
    await asyncio.gather(*(writer.store(read_header(raw), raw) for raw in map(siu, ("W1", "W2", "W3", "W4"))))
    first = asyncio.ensure_future(writer.store(read_header(siu("S1")), siu("S1")))
    await asyncio.sleep(gap_s)
    await asyncio.gather(first, *(writer.store(read_header(raw), raw) for raw in map(siu, ("S2", "S3", "S4"))))
    then()
    await writer.stop()


def transactions(container) -> list[set[str]]:
    """Control ids grouped by the transaction that stored them (one ``received_at`` each)."""
    with read_transaction(container.sessions) as session:
        rows = session.execute(select(InboundMessage.control_id, InboundMessage.received_at)).all()
    by_time: dict[object, set[str]] = {}
    for control_id, at in rows:
        by_time.setdefault(at, set()).add(control_id)
    return sorted(by_time.values(), key=sorted)


def with_one_stored(tmp_path):
    """A container whose writer has stored one message (FIRST): the system key it seals
    with is read and cached, as after a serving adapter's first message."""
    container = migrated_container(settings_for(tmp_path))
    container.intake.writer.write([(read_header(siu("FIRST")), siu("FIRST"))])
    return container


def the_whole_pool(pool) -> list:
    """Every connection ``pool`` can hand out, checked out (HTTP requests and background
    work holding them all)."""
    return [pool.connect() for _ in range(pool.size() + pool._max_overflow - pool.checkedout())]


def test_after_a_batch_of_four_the_next_waits_for_three_stragglers(tmp_path):
    container = migrated_container(settings_for(tmp_path))
    container.intake.writer.linger_s = 1.0
    asyncio.run(two_waves(container.intake.writer, gap_s=0.05))
    assert transactions(container) == [{"S1", "S2", "S3", "S4"}, {"W1", "W2", "W3", "W4"}]


def test_without_lingering_the_first_straggler_is_stored_alone(tmp_path):
    container = migrated_container(settings_for(tmp_path))
    container.intake.writer.linger_s = 0.0
    asyncio.run(two_waves(container.intake.writer, gap_s=0.05))
    assert transactions(container) == [{"S1"}, {"S2", "S3", "S4"}, {"W1", "W2", "W3", "W4"}]


def test_a_lone_sender_is_never_held_back(tmp_path):
    """After a batch of one, the next message is stored as soon as it arrives,
    even with a long linger: nothing suggests another is coming."""
    container = migrated_container(settings_for(tmp_path))
    writer = container.intake.writer
    writer.linger_s = 30.0

    async def one_by_one() -> None:
        for i in range(3):
            raw = siu(f"L{i}")
            await writer.store(read_header(raw), raw)
        await writer.stop()

    asyncio.run(asyncio.wait_for(one_by_one(), 10.0))  # a linger would take 30 s
    assert transactions(container) == [{"L0"}, {"L1"}, {"L2"}]


def sample(name: str, **labels: str) -> float:
    from adapter.metrics import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_operators_see_how_many_messages_each_commit_held(tmp_path):
    container = migrated_container(settings_for(tmp_path))
    container.intake.writer.linger_s = 1.0
    commits, messages = sample("adapter_hl7_store_batch_messages_count"), sample("adapter_hl7_store_batch_messages_sum")
    asyncio.run(two_waves(container.intake.writer, gap_s=0.05))
    assert sample("adapter_hl7_store_batch_messages_count") - commits == 2
    assert sample("adapter_hl7_store_batch_messages_sum") - messages == 8


def test_operators_see_an_ack_s_commit_waiting_for_a_background_transaction(tmp_path):
    """Slow ACKs from a busy disk and slow ACKs from background work holding SQLite's one
    write lock look the same from outside; the store's phases tell them apart."""
    container = with_one_stored(tmp_path)
    waited = sample("adapter_hl7_store_seconds_sum", phase="lock_wait")
    raw = siu("LOCKED")
    with write_lock_held(container.sessions, "SELECT id FROM inbound_message", hold_s=0.3):
        container.intake.writer.write([(read_header(raw), raw)])  # waits for the holder
    assert sample("adapter_hl7_store_seconds_sum", phase="lock_wait") - waited >= 0.2
    assert sample("adapter_hl7_store_seconds_count", phase="write") >= 1


def test_a_message_the_database_refuses_fails_alone_not_the_messages_stored_with_it(tmp_path, pg_url):
    """PostgreSQL refuses a NUL in text. ``read_header`` rejects such an MSH before it
    gets here; should anything else make one message's insert fail, the batch is
    written again a message at a time: its neighbours (other hospitals, other
    connections) are still stored and acknowledged, only that one is not."""
    container = migrated_container(settings_for(tmp_path, pg_url))
    writer = container.intake.writer
    writer.linger_s = 0.0
    good = [siu(f"G{i}") for i in range(3)]
    bad = replace(read_header(siu("B1")), control_id="B\x001")

    async def batch():
        first = asyncio.ensure_future(writer.store(read_header(siu("G-first")), siu("G-first")))
        await asyncio.sleep(0)  # the writer takes the first; the rest queue behind it, together
        results = await asyncio.gather(*(writer.store(read_header(raw), raw) for raw in good),
                                       writer.store(bad, siu("B1")), return_exceptions=True)
        await first
        await writer.stop()
        return results

    results = asyncio.run(batch())
    assert [isinstance(r, Exception) for r in results] == [False, False, False, True]
    with read_transaction(container.sessions) as session:
        stored = set(session.scalars(select(InboundMessage.control_id)))
    assert stored == {"G-first", "G0", "G1", "G2"}
    container.engine.dispose()


def test_a_commit_mixing_new_messages_and_retransmissions_stores_each_new_one_once_and_counts_the_rest(
        tmp_path, database_url):
    """One transaction holding new messages, retransmissions of a message stored before
    (whose ACK comes from the stored original: its status and error) and a message sent
    twice within it: each new one stored once with its own bytes, the rest counted on
    the original and answered with its id."""
    container = migrated_container(settings_for(tmp_path, database_url))
    writer = container.intake.writer
    old = siu("OLD")
    [first] = writer.write([(read_header(old), old)])
    with transaction(container.sessions) as session:
        session.execute(update(InboundMessage).where(InboundMessage.id == first.message_id)
                        .values(status="error", error="no such clinic"))
    batch = [siu(control_id) for control_id in ("N1", "OLD", "N2", "N1", "OLD", "N3")]
    stored = writer.write([(read_header(raw), raw) for raw in batch])

    with read_transaction(container.sessions) as session:
        rows = {row.control_id: row for row in session.execute(
            select(InboundMessage.control_id, InboundMessage.id, InboundMessage.duplicates))}
        raws = session.execute(select(InboundRaw.message_id, InboundRaw.raw_enc)).all()
        opened = {message_id: container.vault.decrypt(session, sealed) for message_id, sealed in raws}
    assert {control_id: row.duplicates for control_id, row in rows.items()} == {"OLD": 2, "N1": 1, "N2": 0, "N3": 0}
    assert opened == {rows[c].id: siu(c) for c in ("OLD", "N1", "N2", "N3")}
    assert [(s.message_id, s.duplicate, s.status, s.error) for s in stored] == [
        (rows["N1"].id, False, "stored", None),
        (first.message_id, True, "error", "no such clinic"),
        (rows["N2"].id, False, "stored", None),
        (rows["N1"].id, True, "stored", None),
        (first.message_id, True, "error", "no such clinic"),
        (rows["N3"].id, False, "stored", None),
    ]
    assert rows["N1"].id < rows["N2"].id < rows["N3"].id  # stored in the order they came
    container.engine.dispose()


def test_a_lone_message_is_stored_after_postgresql_dropped_the_store_s_connection(tmp_path, pg_url):
    """The store keeps its connection between close writes (no ping); one the server
    closed meanwhile (a restart, a failover) is replaced and the write sent again, so
    the message is stored and acknowledged, not refused."""
    import psycopg
    from sqlalchemy.engine import make_url

    from tests.harness import PG_ADMIN

    container = migrated_container(settings_for(tmp_path, pg_url))
    writer = container.intake.writer
    writer.linger_s = 0.0

    async def around_a_restart() -> None:
        await writer.store(read_header(siu("BEFORE")), siu("BEFORE"))
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            assert conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                                " WHERE datname = %s AND pid <> pg_backend_pid()",
                                (make_url(pg_url).database,)).fetchone()[0] > 0
        await writer.store(read_header(siu("AFTER")), siu("AFTER"))
        await writer.stop()

    asyncio.run(around_a_restart())
    with read_transaction(container.sessions) as session:
        assert set(session.scalars(select(InboundMessage.control_id))) == {"BEFORE", "AFTER"}
    container.engine.dispose()


def _store_threads() -> set[int]:
    import threading

    return {t.ident for t in threading.enumerate() if t.name.startswith("hl7-store")}


def test_on_sqlite_an_ack_s_write_runs_on_the_event_loop_when_the_lock_is_free(tmp_path, monkeypatch):
    """Handing a quick write to the store thread and back cost more than the write
    (bench/mllp.py's floor servers); so with the lock free, the statements run on the
    event loop's own thread."""
    import threading

    import adapter.intake

    monkeypatch.setattr(adapter.intake, "INLINE_WRITE_S", 60.0)  # a loaded machine's sync is still "quick"
    container = migrated_container(settings_for(tmp_path))
    writer = container.intake.writer
    ran_on: list[int] = []

    async def waves() -> None:
        await writer.store(read_header(siu("FIRST")), siu("FIRST"))  # the system key read, a connection kept
        writer._loop_connection.dbapi_connection.set_trace_callback(lambda _: ran_on.append(threading.get_ident()))
        await two_waves(writer, gap_s=0.01)

    asyncio.run(waves())
    assert ran_on and set(ran_on) == {threading.get_ident()}  # asyncio.run's loop runs on this thread
    assert sum(len(group) for group in transactions(container)) == 9


def test_an_ack_s_write_that_would_wait_for_the_lock_waits_in_the_store_thread_not_on_the_loop(tmp_path):
    """While background work holds the write lock, the event loop goes on (other
    connections read, HTTP answers); the message is stored once the lock is free."""
    container = with_one_stored(tmp_path)

    async def store_while_held() -> int:
        raw = siu("HELD")
        with write_lock_held(container.sessions, "SELECT id FROM inbound_message"):
            before = _store_threads()
            stored = asyncio.ensure_future(container.intake.writer.store(read_header(raw), raw))
            ticks = 0
            for _ in range(20):  # the loop must keep turning while the write waits
                await asyncio.sleep(0.005)
                ticks += 1
            assert not stored.done()
            assert _store_threads() - before
        await stored
        await container.intake.writer.stop()
        return ticks

    assert asyncio.run(store_while_held()) == 20
    assert {"FIRST", "HELD"} == {c for group in transactions(container) for c in group}


def test_after_a_slow_write_the_next_goes_to_the_store_thread(tmp_path, monkeypatch):
    """A slow disk's sync would keep every connection waiting on the loop."""
    import adapter.intake

    container = with_one_stored(tmp_path)
    monkeypatch.setattr(adapter.intake, "INLINE_WRITE_S", 0.0)  # every write counts as slow
    before = _store_threads()

    async def store(control_id: str) -> None:
        raw = siu(control_id)
        await container.intake.writer.store(read_header(raw), raw)

    async def two() -> set[int]:
        await store("A")
        await store("B")
        threads = _store_threads()
        await container.intake.writer.stop()
        return threads

    assert asyncio.run(two()) - before


def test_an_ack_s_write_on_the_loop_never_waits_for_a_connection_from_the_pool(tmp_path, monkeypatch):
    """HTTP requests and background work may hold every pooled connection; the loop's
    writes keep one of their own, so they neither wait for one (the loop would stop for
    the pool's 30 s timeout) nor fail."""
    import adapter.intake

    monkeypatch.setattr(adapter.intake, "INLINE_WRITE_S", 60.0)
    container = with_one_stored(tmp_path)
    pool = container.engine.pool

    async def store_with_the_pool_taken() -> None:
        await container.intake.writer.store(read_header(siu("WARM")), siu("WARM"))
        taken = the_whole_pool(pool)
        try:
            raw = siu("POOL-EMPTY")
            await asyncio.wait_for(container.intake.writer.store(read_header(raw), raw), 10)
        finally:
            for connection in taken:
                connection.close()
            await container.intake.writer.stop()

    asyncio.run(store_with_the_pool_taken())
    assert {"FIRST", "WARM", "POOL-EMPTY"} == {c for group in transactions(container) for c in group}


def test_a_commit_that_went_to_the_store_thread_for_a_held_lock_is_counted_once(tmp_path):
    """The write first tried on the loop (the lock held: nothing written) and then done in
    the store thread is one commit of one message in the batch-size histogram."""
    container = with_one_stored(tmp_path)
    commits, messages = sample("adapter_hl7_store_batch_messages_count"), sample("adapter_hl7_store_batch_messages_sum")

    async def store_while_held() -> None:
        raw = siu("HELD")
        with write_lock_held(container.sessions, "SELECT id FROM inbound_message", hold_s=0.2):
            await container.intake.writer.store(read_header(raw), raw)
        await container.intake.writer.stop()

    asyncio.run(store_while_held())
    assert sample("adapter_hl7_store_batch_messages_count") - commits == 1
    assert sample("adapter_hl7_store_batch_messages_sum") - messages == 1


def test_the_loop_s_own_connection_is_taken_from_the_pool_by_the_store_thread(tmp_path, monkeypatch):
    """Its first write (and the first after one failed) needs a connection from the pool,
    which may have none to give for a while: the store thread waits for it, not the loop."""
    import time

    import adapter.intake

    monkeypatch.setattr(adapter.intake, "INLINE_WRITE_S", 60.0)
    container = with_one_stored(tmp_path)
    pool = container.engine.pool

    async def store_while_the_pool_is_taken() -> float:
        taken = the_whole_pool(pool)
        raw = siu("POOL-EMPTY")
        stored = asyncio.ensure_future(container.intake.writer.store(read_header(raw), raw))
        longest, last = 0.0, time.monotonic()
        for _ in range(20):
            await asyncio.sleep(0.01)
            longest, last = max(longest, time.monotonic() - last), time.monotonic()
        assert not stored.done()
        for connection in taken:
            connection.close()
        await asyncio.wait_for(stored, 10)
        await container.intake.writer.stop()
        return longest

    assert asyncio.run(store_while_the_pool_is_taken()) < 5  # the pool would keep it 30 s
    assert {"FIRST", "POOL-EMPTY"} == {c for group in transactions(container) for c in group}

