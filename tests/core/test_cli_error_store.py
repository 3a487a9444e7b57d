"""``hl7 errors`` and ``hl7 replay`` as an integration engineer uses them on a live
feed: narrowed by sender, time, type and reason, read by scripts, replayed in bulk.
``python -m adapter`` in subprocesses against a real SQLite database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from adapter.clock import FrozenClock
from hl7.header import read_header
from tests.core.test_cli import cli_side_by_side
from tests.core.test_end_to_end import siu
from tests.harness import migrated_container, settings_for


def siu_without_start(control_id: str, start: datetime, facility: str = "OSP_TEST") -> bytes:
    """A booking with neither SCH-11 nor AIS-4: mapping fails, it goes to the error store."""
    ts = start.strftime("%Y%m%d%H%M%S+0000").encode()
    booking = siu("S12", control_id, start).replace(b"|CUP|OSP_TEST|", f"|CUP|{facility}|".encode(), 1)
    return booking.replace(b"|^^^" + ts + b"|", b"||").replace(b"|" + ts + b"|", b"||")


def siu_without_patient_key(control_id: str, start: datetime, facility: str = "OSP_TEST") -> bytes:
    """A booking whose only PID-3 is not an MRN: no patient key, to the error store."""
    booking = siu("S12", control_id, start).replace(b"|CUP|OSP_TEST|", f"|CUP|{facility}|".encode(), 1)
    return booking.replace(b"^^^OSP_TEST^MR|", b"^^^OSP_TEST^XX|")


def store(tmp_path: Path, batches: list[tuple[timedelta, list[bytes]]]) -> None:
    """Receive and process each batch of messages as if it came ``ago`` before now."""
    now = datetime.now(UTC).replace(microsecond=0)
    clock = FrozenClock(now)
    container = migrated_container(settings_for(tmp_path), clock=clock)
    for ago, messages in batches:
        clock.set(now - ago)
        container.intake.writer.write([(read_header(m), m) for m in messages])
        container.intake.process_pending()
    container.engine.dispose()


def test_hl7_errors_narrows_by_sender_time_type_and_reason_and_prints_json_lines_without_content(tmp_path):
    """Piped at 80 columns the table cut the sender to ``CUP^OSP_…`` (the one thing that
    tells two hospitals apart) and there was no way to narrow the listing at all."""
    start = datetime.now(UTC) + timedelta(days=2)
    store(tmp_path, [
        (timedelta(days=3), [siu_without_start("OLD1", start), siu_without_start("OLD2", start, "OSP_NORD")]),
        (timedelta(minutes=5), [siu_without_start("NORD1", start, "OSP_NORD"),
                                siu_without_patient_key("NORD2", start, "OSP_NORD"),
                                siu_without_start("TEST1", start), siu("S12", "FINE1", start)]),
    ])
    nord, recent, reason, bad_since = cli_side_by_side(
        tmp_path, ["hl7", "errors", "--facility", "OSP_NORD"], ["hl7", "errors", "--since", "1h", "--json"],
        ["hl7", "errors", "--reason", "START TIME", "--facility", "CUP^OSP_NORD", "--type", "SIU", "--json"],
        ["hl7", "errors", "--since", "yesterday"], env={"COLUMNS": "80"})

    assert nord.returncode == 0, nord.stderr
    rows = [line for line in nord.stdout.splitlines() if "CUP^OSP_NORD" in line]
    assert [row.split("│")[4].strip() for row in rows] == ["OLD2", "NORD1", "NORD2"]  # whole rows, one a line
    assert "OSP_TEST" not in nord.stdout and "3 in the error store match these filters" in nord.stdout

    assert recent.returncode == 0, recent.stderr
    lines = [json.loads(line) for line in recent.stdout.splitlines()]
    assert [line["control_id"] for line in lines] == ["NORD1", "NORD2", "TEST1"]
    assert set(lines[0]) == {"id", "source", "received_at", "sender", "control_id", "type", "status", "reason",
                             "replayable", "not_replayable"}
    assert lines[0]["sender"] == "CUP^OSP_NORD" and lines[0]["type"] == "SIU^S12" and lines[0]["replayable"] is True
    for personal in ("Nicol", "D'Al", "0012345", "333"):
        assert personal not in recent.stdout

    assert [json.loads(line)["control_id"] for line in reason.stdout.splitlines()] == ["OLD2", "NORD1"]
    assert bad_since.returncode == 2 and len(bad_since.stderr.strip().splitlines()) == 1
    assert "--since yesterday" in bad_since.stderr and "2h" in bad_since.stderr
