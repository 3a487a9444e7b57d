"""CPU instructions per HL7 booking mapped and applied in process, counted by
callgrind: a figure that does not move with the machine's speed, for comparing two
versions of the mapping path (``HL7Intake.process_batch``: decrypt, ``map_message``,
``Pipeline.handle_many``, mark processed).

How it is run: a real container (``adapter.bootstrap.build``) on a fresh SQLite
database in a temporary directory, as ``bench/pipeline.py`` makes it. A warm-up of
bookings and reschedules is processed first (imports, compiled statements, first
connections), then N SIU^S12 bookings of new patients and N SIU^S13 reschedules of
patients booked during the set-up are stored as the ACK path stores them; only
processing each of the two is counted on its own, 128 messages per transaction
(``MAX_CHUNK``; the chunk does not depend on timing here), with what was made before left
out of garbage collections as ``serve`` does. Callgrind collects only inside
``contextvars.Context.run`` (``--toggle-collect=context_run``), which wraps each counted
part and nothing in them calls, and writes a file after each (``--dump-after``).

Run: ``.venv/bin/python -m bench.mapping_instructions`` (re-runs itself under
``valgrind --tool=callgrind``, a few minutes; prints instructions per message of each
part and leaves the callgrind files, for ``callgrind_annotate``, in ``var/``).
``--profile``: cProfile of the same parts instead: function calls per message and the
top functions by tottime (the stats in ``var/mapping.prof.1`` and ``.2``, for ``pstats``).
``BENCH_INSTRUCTIONS_MESSAGES`` sets N (default 300).
"""

from __future__ import annotations

import contextvars
import os
import re
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

from bench.common import unique_tag
from bench.mllp import Messages, siu_s12
from bench.pipeline import as_serve_runs, store

COUNT = int(os.environ.get("BENCH_INSTRUCTIONS_MESSAGES", "300"))
WARM = 50
OUT = "var/callgrind.out.mapping"  # var/ is left out of git
PARTS = ("new-patient bookings", "reschedules")  # counted apart, in this order


def reschedule(tag: str, i: int, start: datetime) -> str:
    """SIU^S13 of booking ``i`` (``siu_s12(tag, i, start)``): the same patient and
    appointment a day later, sent later."""
    booked = siu_s12(tag, i, start + timedelta(days=1))
    return (booked.replace("SIU^S12^SIU_S12", "SIU^S13^SIU_S13")
            .replace("|20300101000000+0000|", "|20300101000100+0000|")
            .replace(f"|B{tag}{i:08d}|", f"|R{tag}{i:08d}|"))


def counted_parts(tmp: Path, count: int):  # noqa: ANN201 - (container, [process, ...])
    """A container in ``tmp`` with the set-up done, and the functions that process what
    is counted: ``count`` bookings of new patients, then ``count`` reschedules of known
    patients."""
    from adapter.intake import MAX_CHUNK
    from tests.harness import migrated_container, settings_for

    container = migrated_container(settings_for(tmp))
    intake = container.intake
    tag, start = unique_tag(), Messages().start

    def stored(texts: list[str]) -> list[int]:
        before = set(intake.pending_ids(limit=10 * count + 1000))
        store(container, texts)
        return [i for i in intake.pending_ids(limit=10 * count + 1000) if i not in before]

    def process(ids: list[int]) -> None:
        intake.process_batch(ids, budget_s=float("inf"), chunk=MAX_CHUNK, quiet_s=lambda: float("inf"))

    # Warm-up, and the bookings the counted reschedules move.
    known = range(WARM + count)
    process(stored([siu_s12(tag, i, start) for i in known]))
    process(stored([reschedule(tag, i, start) for i in known[:WARM]]))
    new = stored([siu_s12(tag, i, start) for i in range(len(known), len(known) + count)])
    moved = stored([reschedule(tag, i, start) for i in known[WARM:]])
    return container, [lambda: process(new), lambda: process(moved)]  # as PARTS


@contextmanager
def counted(count: int):  # noqa: ANN201 - Iterator[(container, [process, ...])]
    """:func:`counted_parts` in a temporary directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="adapter-bench-instructions-") as tmp:
        container, parts = counted_parts(Path(tmp), count)
        try:
            yield container, parts
        finally:
            container.engine.dispose()


def statuses(container) -> dict[str, int]:  # noqa: ANN001
    from sqlalchemy import func, select

    from adapter.db import transaction
    from adapter.models import InboundMessage

    with transaction(container.sessions) as session:
        return dict(session.execute(
            select(InboundMessage.status, func.count()).group_by(InboundMessage.status)).all())


def under_callgrind() -> None:
    with counted(COUNT) as (container, parts), as_serve_runs():
        for process in parts:
            contextvars.Context().run(process)  # one callgrind dump each (--dump-after)
        print(f"statuses {statuses(container)}", flush=True)


def profile() -> None:
    import cProfile
    import pstats

    with counted(COUNT) as (container, parts), as_serve_runs():
        for number, (what, process) in enumerate(zip(PARTS, parts, strict=True), start=1):
            profiler = cProfile.Profile()
            profiler.runcall(process)
            profiler.dump_stats(f"var/mapping.prof.{number}")
            stats = pstats.Stats(profiler)
            print(f"\n{what}: {stats.total_calls / COUNT:.0f} function calls per message (var/mapping.prof.{number})")
            stats.sort_stats("tottime").print_stats(25)
        print(f"statuses {statuses(container)}")


def main() -> None:
    Path("var").mkdir(exist_ok=True)
    if "--profile" in sys.argv:
        profile()
        return
    if os.environ.get("BENCH_UNDER_CALLGRIND"):
        under_callgrind()
        return
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={OUT}", "--collect-atstart=no",
         "--toggle-collect=context_run", "--dump-after=context_run", sys.executable, "-m", "bench.mapping_instructions"],
        env={**os.environ, "BENCH_UNDER_CALLGRIND": "1"}, check=True)
    counts = []
    for number, what in enumerate(PARTS, start=1):
        text = Path(f"{OUT}.{number}").read_text()
        counts.append(int(re.search(r"^(?:summary|totals): (\d+)", text, re.MULTILINE).group(1)))
        print(f"{what:22}{counts[-1] / COUNT / 1e6:8.3f} M instructions per message ({OUT}.{number})")
    print(f"{'both':22}{sum(counts) / (2 * COUNT) / 1e6:8.3f} M instructions per message "
          f"({COUNT} of each)", flush=True)


if __name__ == "__main__":
    main()
