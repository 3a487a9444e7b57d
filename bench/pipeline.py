"""Mapping HL7 bookings to events, in process: stored SIU^S12 bookings processed by
the real intake (``HL7Intake.process_pending``: decrypt, map, ``Pipeline.handle`` —
patient upsert with a new data key, appointment, four notifications with consent
decisions, audit entries — and mark processed), against the HL7 mapping alone
(``hl7.mapping.map_message`` on the same texts) measured in the same run.

How it is run: a real container (``adapter.bootstrap.build``) on a fresh SQLite
database (WAL, synchronous=FULL) in a temporary directory; N bookings (each a new
patient with Italian names and a mobile phone, as ``bench/mllp.py`` sends them) stored
as the ACK path stores them (``GroupCommitWriter.write``, 256 per transaction); only
the processing is timed. Nothing is sent (no dispatcher runs). No assertions.

Run: ``.venv/bin/python -m bench.pipeline`` (``BENCH_PIPELINE_MESSAGES`` sets N).
"""

from __future__ import annotations

import gc
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.common import header, verdict
from bench.mllp import Messages

COUNT = int(os.environ.get("BENCH_PIPELINE_MESSAGES", "2000"))
TARGET = 1000.0  # bookings mapped per second (issue 4, "mapped end to end")


def store(container, texts: list[str]) -> None:  # noqa: ANN001
    """Store the raw messages exactly as the ACK path does (group commit)."""
    from hl7.header import read_header

    writer = container.intake.writer
    for first in range(0, len(texts), writer.max_batch):
        raws = [text.encode("utf-8") for text in texts[first : first + writer.max_batch]]
        writer.write([(read_header(raw), raw) for raw in raws])


def mapping_alone(container, texts: list[str]) -> float:  # noqa: ANN001
    """Seconds for ``map_message`` on every text (the baseline)."""
    from hl7.mapping import map_message

    received_at = container.clock.now()
    started = time.perf_counter()
    for text in texts:
        map_message(text, container.facilities, received_at=received_at)
    return time.perf_counter() - started


@contextmanager
def as_serve_runs() -> Iterator[None]:
    """What was made before (modules, the container) left out of garbage collections,
    as ``serve`` does at start-up (``freeze_start_up_objects``): otherwise one full
    collection over those objects was ~13% of the processing timed here."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def processing(texts: list[str]) -> tuple[float, dict[str, int]]:
    """Seconds to process every stored booking through the real intake, and the
    statuses the messages ended with."""
    from sqlalchemy import func, select

    from adapter.db import transaction
    from adapter.models import InboundMessage
    from tests.harness import migrated_container, settings_for

    with tempfile.TemporaryDirectory(prefix="adapter-bench-pipeline-") as tmp:
        container = migrated_container(settings_for(Path(tmp)))
        try:
            store(container, texts)
            with as_serve_runs():
                started = time.perf_counter()
                container.intake.process_pending()
                seconds = time.perf_counter() - started
            with transaction(container.sessions) as session:
                counts = dict(session.execute(
                    select(InboundMessage.status, func.count()).group_by(InboundMessage.status)).all())
        finally:
            container.engine.dispose()
    return seconds, counts


def pipeline_alone(texts: list[str], *, together: bool, batch: int = 100) -> float:
    """Seconds for ``Pipeline.handle`` (a savepoint per message, as the intake calls it) or
    ``Pipeline.handle_many`` on the mapped bookings, ``batch`` messages per transaction
    (mapping not timed)."""
    from adapter.db import transaction
    from hl7.mapping import map_message
    from tests.harness import migrated_container, settings_for

    with tempfile.TemporaryDirectory(prefix="adapter-bench-pipeline-") as tmp:
        container = migrated_container(settings_for(Path(tmp)))
        try:
            now = container.clock.now()
            messages = [map_message(text, container.facilities, received_at=now) for text in texts]
            pipeline = container.pipeline
            with as_serve_runs():
                started = time.perf_counter()
                for first in range(0, len(messages), batch):
                    with transaction(container.sessions) as session:
                        if together:
                            pipeline.handle_many(session, messages[first : first + batch], now=now)
                        else:
                            for events in messages[first : first + batch]:
                                with session.begin_nested():
                                    pipeline.handle(session, events, now=now)
                return time.perf_counter() - started
        finally:
            container.engine.dispose()


def main() -> None:
    header("Pipeline: stored HL7 bookings mapped to events in process (SQLite WAL) vs the HL7 mapping alone")
    print(f"how it was run: {COUNT} SIU^S12 bookings (a new patient each, mobile phone), stored by the ACK path's\n"
          "  group commit, then HL7Intake.process_pending on a fresh container; baseline: map_message alone;\n"
          "  the pipeline alone on the mapped bookings (100 per transaction): handle in a savepoint each, handle_many",
          flush=True)
    messages = Messages()
    warm = [messages.text() for _ in range(50)]
    texts = [messages.text() for _ in range(COUNT)]
    processing(warm)  # imports, first connections, compiled statements
    seconds, counts = processing(texts)
    one_by_one = pipeline_alone(texts, together=False)
    together = pipeline_alone(texts, together=True)
    from tests.harness import migrated_container, settings_for

    with tempfile.TemporaryDirectory(prefix="adapter-bench-mapping-") as tmp:
        container = migrated_container(settings_for(Path(tmp)))
        try:
            mapping_alone(container, warm)
            baseline = mapping_alone(container, texts)
        finally:
            container.engine.dispose()

    rate, base_rate = COUNT / seconds, COUNT / baseline
    print(f"\n{'':28}{'bookings/s':>12}{'ms per booking':>16}")
    print(f"{'map_message alone':28}{base_rate:>12.0f}{baseline / COUNT * 1e3:>16.3f}")
    print(f"{'intake processing (mapped)':28}{rate:>12.0f}{seconds / COUNT * 1e3:>16.3f}")
    print(f"{'Pipeline.handle, each':28}{COUNT / one_by_one:>12.0f}{one_by_one / COUNT * 1e3:>16.3f}")
    print(f"{'Pipeline.handle_many':28}{COUNT / together:>12.0f}{together / COUNT * 1e3:>16.3f}")
    print(f"ratio processing/mapping alone: {rate / base_rate:.3f}   statuses {counts}")
    print(f"ratio handle_many/mapping alone: {COUNT / together / base_rate:.3f}; "
          f"handle_many/handle each: {one_by_one / together:.2f}x")
    print(f"bookings mapped per second: {rate:.0f}   target >= {TARGET:.0f}: {verdict(rate, TARGET)}", flush=True)


if __name__ == "__main__":
    main()
