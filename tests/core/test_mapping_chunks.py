"""Stored HL7 messages are mapped in chunks of up to MAX_CHUNK, as many as take half the
time the feed has been quiet, and one at a time while messages arrive: an ACK waits
for at most the chunk in progress, and never while a message is parsed and mapped."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import adapter.intake
from adapter.intake import MAX_CHUNK

from sqlalchemy import select

from adapter.models import InboundMessage
from hl7.header import read_header
from tests.core.test_end_to_end import siu
from tests.harness import migrated_container, settings_for


def test_hl7_messages_are_mapped_in_chunks_only_while_the_feed_is_quiet(tmp_path):
    container = migrated_container(settings_for(tmp_path))
    intake, sizes = container.intake, []
    mapped = intake._map_stored
    intake._map_stored = lambda ids, statuses: (sizes.append(len(ids)), mapped(ids, statuses))[1]
    start = datetime.now(UTC) + timedelta(days=2)

    def store(prefix: str, count: int = 40) -> None:
        raws = [siu("S12", f"{prefix}{n}", start) for n in range(count)]
        intake.writer.write([(read_header(raw), raw) for raw in raws])

    store("Q", MAX_CHUNK + 8)  # the feed has long been quiet (nothing has arrived)
    assert intake.process_pending() == MAX_CHUNK + 8
    assert sizes == [MAX_CHUNK, 8]

    sizes.clear()
    store("B")
    intake.writer.waiting.begin()  # a message arrives and waits for its ACK meanwhile
    try:
        assert intake.process_batch(intake.pending_ids()) == 1  # gives way after one
    finally:
        intake.writer.waiting.end()
    assert sizes == [1]

    sizes.clear()
    store("G")
    intake._seconds_each = 0.001  # as timed on the chunks before
    intake.process_batch(intake.pending_ids(), quiet_s=lambda: 0.012)  # a 12 ms gap in a feed
    assert sizes[0] == 6  # a transaction of about 6 ms, half the gap
    container.engine.dispose()


def test_a_message_is_mapped_without_the_write_lock_so_an_ack_never_waits_for_its_parsing(tmp_path, monkeypatch):
    """While the mapper parses a message (a report of thousands of OBX segments takes a
    noticeable time), another message is stored, as its ACK needs, at once."""
    container = migrated_container(settings_for(tmp_path))
    intake = container.intake
    start = datetime.now(UTC) + timedelta(days=2)
    first, second = siu("S12", "MAPPED", start), siu("S12", "MEANWHILE", start)
    intake.writer.write([(read_header(first), first)])
    storing = threading.Thread(target=intake.writer.write, args=([(read_header(second), second)],))
    stored_meanwhile: list[bool] = []
    real = adapter.intake.map_message

    def map_while_another_is_stored(*args, **kwargs):
        if not stored_meanwhile:
            storing.start()
            storing.join(timeout=5)  # a guard only: with the write lock held it waits for this mapping
            stored_meanwhile.append(not storing.is_alive())
        return real(*args, **kwargs)

    monkeypatch.setattr(adapter.intake, "map_message", map_while_another_is_stored)
    intake.process_pending()
    storing.join()
    assert stored_meanwhile == [True]
    intake.process_pending()  # the message stored meanwhile
    with container.sessions() as session:
        statuses = dict(session.execute(select(InboundMessage.control_id, InboundMessage.status)).all())
    assert statuses == {"MAPPED": "processed", "MEANWHILE": "processed"}
    container.engine.dispose()


def test_large_messages_are_mapped_a_few_at_a_time_so_memory_stays_bounded(tmp_path, monkeypatch):
    container = migrated_container(settings_for(tmp_path))
    intake, sizes = container.intake, []
    mapped = intake._map_stored
    intake._map_stored = lambda ids, statuses: (sizes.append(len(ids)), mapped(ids, statuses))[1]
    start = datetime.now(UTC) + timedelta(days=2)
    padding = b"ZPD|" + b"x" * 300_000 + b"\r"  # a Z-segment: kept and ignored
    raws = [siu("S12", f"L{n}", start) + padding for n in range(3)] + [siu("S12", f"S{n}", start) for n in range(3)]
    intake.writer.write([(read_header(raw), raw) for raw in raws])
    monkeypatch.setattr(adapter.intake, "CHUNK_BYTES", 500_000)

    assert intake.process_pending() == 6
    assert sizes == [1, 1, 4]  # one large at a time; the last large one and the small ones together
    with container.sessions() as session:
        assert set(session.scalars(select(InboundMessage.status))) == {"processed"}
    container.engine.dispose()
