"""``hl7 errors`` and ``hl7 replay`` as an integration engineer uses them on a live
feed: narrowed by sender, time, type and reason, read by scripts, replayed in bulk.
``python -m adapter`` in subprocesses against a real SQLite database."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select

from adapter.clock import FrozenClock
from adapter.db import transaction
from hl7.header import read_header
from tests.core.test_cli import ROOT, cli, cli_side_by_side
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
    return booking.replace(b"^^^OSP_TEST^MR|", f"^^^{facility}^XX|".encode())


def store(tmp_path: Path, batches: list[tuple[timedelta, list[bytes]]], **settings: object) -> None:
    """Receive and process each batch of messages as if it came ``ago`` before now."""
    now = datetime.now(UTC).replace(microsecond=0)
    clock = FrozenClock(now)
    container = migrated_container(settings_for(tmp_path, **settings), clock=clock)
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


def test_hl7_replay_all_replays_what_the_filters_match_and_sums_up_what_still_fails(tmp_path):
    """After fixing a facility's mapping, ``replay --all --facility`` replays its
    messages and only them, says how many were processed and why the others still fail
    (exit 1); replaying one processed since is a no-op, not a second notification."""
    from adapter.models import Notification

    config = tmp_path / "config"
    shutil.copytree(ROOT / "config", config)
    facilities = config / "facilities.yaml"
    fixed = facilities.read_text()
    facilities.write_text(fixed + "\n  OSP_NORD:\n    start_time: [TQ1-7]\n")  # a wrong mapping: no TQ1 sent
    env = {"ADAPTER_CONFIG_DIR": str(config)}
    start = datetime.now(UTC) + timedelta(days=2)
    store(tmp_path, [(timedelta(minutes=5), [siu_without_patient_key("TEST1", start),
                                             siu_without_start("TEST2", start)])], config_dir=config)
    store(tmp_path, [(timedelta(minutes=1), [
        siu("S12", f"NORD{i}", start).replace(b"|CUP|OSP_TEST|", b"|CUP|OSP_NORD|", 1) for i in (1, 2)
    ] + [siu_without_start("NORD3", start, "OSP_NORD")])], config_dir=config)
    facilities.write_text(fixed)

    replay = cli(tmp_path, "hl7", "replay", "--all", "--facility", "OSP_NORD", env=env)
    assert replay.returncode == 1, replay.stderr
    assert replay.stdout.splitlines() == [
        "3: processed", "4: processed", "5: still failing: no appointment start time in SCH-11, AIS-4, TQ1-7",
        "3 messages: 2 processed, 1 not", "  1 still failing: no appointment start time in SCH-11, AIS-4, TQ1-7"]
    container = migrated_container(settings_for(tmp_path, config_dir=config))
    with transaction(container.sessions) as session:
        notified = session.scalar(select(func.count()).select_from(Notification))
    assert notified

    again, errors, both = cli_side_by_side(tmp_path, ["hl7", "replay", "3"], ["hl7", "errors", "--json"],
                                           ["hl7", "replay", "3", "--all"], env=env)
    assert again.returncode == 1 and again.stdout.startswith("3: not replayed: it is processed, not in the error store")
    with transaction(container.sessions) as session:
        assert session.scalar(select(func.count()).select_from(Notification)) == notified
    assert [json.loads(line)["control_id"] for line in errors.stdout.splitlines()] == ["TEST1", "TEST2", "NORD3"]
    assert both.returncode == 2 and "not both" in both.stderr


def test_hl7_replay_leaves_one_audit_entry_per_message_by_the_cli_and_the_log_still_verifies(tmp_path):
    """Replaying can notify patients: the log says who asked, for which message, and what
    came of it; never the message's content."""
    start = datetime.now(UTC) + timedelta(days=2)
    store(tmp_path, [(timedelta(minutes=5), [siu_without_start("TEST1", start), siu("S12", "FINE1", start)])])

    replay = cli(tmp_path, "hl7", "replay", "1", "2", "99")

    assert replay.returncode == 1, replay.stderr
    container = migrated_container(settings_for(tmp_path))
    with transaction(container.sessions) as session:
        replayed = [r for r in container.audit.entries(session) if r.action == "hl7_replayed"]
        assert container.audit.verify(session).ok
    container.engine.dispose()
    assert [(r.actor, r.subject, r.details, r.outcome) for r in replayed] == [
        ("cli", "", {"message": 1, "outcome": "still_failing"}, "minor_failure"),
        ("cli", "", {"message": 2, "outcome": "not_replayed"}, "minor_failure"),
        ("cli", "", {"message": 99, "outcome": "no_such_message"}, "minor_failure"),
    ]
    assert [r.reason for r in replayed] == ["replayed at an operator's request"] * 3
