"""A dispatcher round touches the database in as few transactions as it can, and
one notification's failure stays its own (adapter.dispatch.Dispatcher)."""

from __future__ import annotations

from sqlalchemy import event, text

from tests.harness import migrated_container, settings_for


def _round(tmp_path, *, others_waiting: bool) -> tuple[list, int, list[int]]:
    container = migrated_container(settings_for(tmp_path))
    dispatcher = container.dispatcher
    dispatcher.others_waiting = lambda: others_waiting
    commits: list[int] = []
    event.listen(container.engine, "commit", lambda _conn: commits.append(1))
    with container.engine.begin() as connection:
        connection.execute(text("CREATE TABLE probe (v INTEGER)"))
    commits.clear()

    def work(session, item: int) -> int:
        session.execute(text("INSERT INTO probe VALUES (:v)"), {"v": item})
        if item == 2:
            raise ValueError("this one fails")
        return item * 10

    out = dispatcher._each_in_savepoint([0, 1, 2, 3], work)
    with container.engine.connect() as connection:
        kept = sorted(v for (v,) in connection.execute(text("SELECT v FROM probe")))
    container.engine.dispose()
    return out, len(commits), kept


def test_a_round_is_one_transaction_and_a_failure_is_undone_alone(tmp_path):
    out, commits, kept = _round(tmp_path, others_waiting=False)
    assert out[:2] == [0, 10] and isinstance(out[2], ValueError) and out[3] == 30
    assert commits == 1
    assert kept == [0, 1, 3]  # the failing item's savepoint was rolled back, nothing else


def test_a_round_commits_after_each_item_while_an_ack_waits(tmp_path):
    out, commits, kept = _round(tmp_path, others_waiting=True)
    assert out[:2] == [0, 10] and isinstance(out[2], ValueError) and out[3] == 30
    assert commits == 4  # the write lock is let go between items
    assert kept == [0, 1, 3]


def test_a_round_reads_its_notifications_and_patients_once_not_once_each(tmp_path):
    """Preparing and recording a round of 20 bookings' confirmations: the notification
    and patient rows, the consent histories, contacts, channel choices and appointments
    come in one query per table and transaction, and every one is sent."""
    import asyncio
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import func, select

    from adapter.db import transaction
    from adapter.models import Notification
    from hl7.header import read_header
    from tests.core.test_end_to_end import siu

    container = migrated_container(settings_for(tmp_path))
    start = datetime.now(UTC) + timedelta(days=3)
    raws = [siu("S12", f"ROUND{n}", start)  # 20 patients, an appointment each
            .replace(b"PL1^", f"PL{n}^".encode()).replace(b"FL1^", f"FL{n}^".encode())
            .replace(b"0012345^", f"{n:07d}^".encode()).replace(b"^333^1234567", f"^333^12345{n:02d}".encode())
            for n in range(20)]
    container.intake.writer.write([(read_header(raw), raw) for raw in raws])
    container.intake.process_pending()
    reads: list[str] = []
    event.listen(container.engine, "before_cursor_execute",
                 lambda _c, _cur, statement, *_: reads.append(statement))
    commits: list[int] = []
    event.listen(container.engine, "commit", lambda _conn: commits.append(1))
    traced: list[str] = []  # also what goes straight to the DB-API cursor (adapter.db.insert_rows)
    event.listen(container.engine, "before_cursor_execute",
                 lambda conn, *_: conn.connection.dbapi_connection.set_trace_callback(traced.append))
    sent = asyncio.run(container.dispatcher.run_once())
    savepoints = [s for s in reads if s.startswith("SAVEPOINT")]
    assert 1 <= len(savepoints) <= len(commits) < 20  # one per transaction when none fails, not one per notification
    audit_inserts = [s for s in traced if s.startswith("INSERT INTO audit_entry")]
    assert 1 <= len(audit_inserts) <= len(commits)  # the round's "sent" entries appended together, not 20 appends
    by_id = [s for s in reads if s.startswith("SELECT") and ("FROM notification" in s or "FROM patient" in s)]
    assert sent == 20
    assert len(by_id) <= 6  # the claim, then a query per table per transaction: not 3 per notification (62)
    for table in ("consent_record", "contact", "contact_preference", "appointment"):  # not one query each
        assert len([s for s in reads if s.startswith("SELECT") and f"FROM {table} " in s.replace("\n", " ")]) <= 2, table
    with transaction(container.sessions) as session:
        assert session.scalar(select(func.count()).where(Notification.status == "sent")) == 20
    container.engine.dispose()


def test_while_acks_wait_a_round_reads_ahead_only_for_what_it_gets_done(tmp_path):
    """A transaction cut short by a waiting ACK did one item or a few: the next reads
    ahead for about as many, not for the whole rest of the round again (that read held
    the write lock ~11 ms at p50 under a steady HL7 feed); it grows back once nobody waits."""
    container = migrated_container(settings_for(tmp_path))
    waits = iter([True, True, True])  # an ACK waits after each of the first three items
    container.dispatcher.others_waiting = lambda: next(waits, False)
    read_ahead: list[int] = []
    turns: list[float] = []  # serve waits here for a pause in the feeds (adapter.runtime.give_way)
    container.dispatcher.wait_turn = turns.append
    try:
        out = container.dispatcher._each_in_savepoint(
            list(range(20)), lambda _session, item: item * 10,
            prefetch=lambda _session, items: read_ahead.append(len(items)) or [])
        assert out == [item * 10 for item in range(20)]
        assert read_ahead == [20, 2, 2, 2, 4, 8, 3]  # done: 1, 1, 1 (ACKs waiting), then 2, 4, 8 and the last 3
        assert len(turns) == len(read_ahead) - 1 and all(took > 0 for took in turns)  # before each but the first
    finally:
        container.engine.dispose()


def test_a_failure_as_an_items_savepoint_ends_is_that_items_outcome_once(tmp_path):
    """What an item changes through the ORM is written as its savepoint ends: a failure
    there is that item's outcome, in its place. It was put after the item's result, so a
    round had more outcomes than items (recording a round's sends then raised, outcomes
    and all)."""
    from sqlalchemy.exc import IntegrityError

    from adapter.models import Patient

    container = migrated_container(settings_for(tmp_path))

    def work(session, item: int) -> int:
        if item == 1:
            session.add(Patient(id="incomplete"))  # no created_at: refused when the savepoint ends
        return item * 10

    try:
        out = container.dispatcher._each_in_savepoint([0, 1, 2], work)
    finally:
        container.engine.dispose()
    assert len(out) == 3
    assert out[0] == 0 and isinstance(out[1], IntegrityError) and out[2] == 20
