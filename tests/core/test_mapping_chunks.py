"""Stored HL7 messages are mapped in chunks of 32 once the feed has been quiet for
a moment, and one at a time while messages arrive: an ACK waits for at most the
chunk in progress."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hl7.header import read_header
from tests.core.test_end_to_end import siu
from tests.harness import migrated_container, settings_for


def test_hl7_messages_are_mapped_in_chunks_only_while_the_feed_is_quiet(tmp_path):
    container = migrated_container(settings_for(tmp_path))
    intake, sizes = container.intake, []
    locked = intake._locked
    intake._locked = lambda session, ids, status=None: (sizes.append(len(ids)), locked(session, ids, status))[1]
    start = datetime.now(UTC) + timedelta(days=2)

    def store(prefix: str) -> None:
        raws = [siu("S12", f"{prefix}{n}", start) for n in range(40)]
        intake.writer.write([(read_header(raw), raw) for raw in raws])

    store("Q")
    intake.writer.waiting.last_arrival = 0.0  # the feed has long been quiet
    assert intake.process_pending() == 40
    assert sizes == [32, 8]

    sizes.clear()
    store("B")
    intake.writer.waiting.begin()  # a message arrives and waits for its ACK meanwhile
    try:
        assert intake.process_batch(intake.pending_ids()) == 1  # gives way after one
    finally:
        intake.writer.waiting.end()
    assert sizes == [1]
    container.engine.dispose()
