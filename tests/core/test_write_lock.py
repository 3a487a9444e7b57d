"""The SQLite write lock of one process (adapter.db.FairLock), raw transactions
and the Waiting signal that background work gives way to."""

from __future__ import annotations

import math
import threading
import time
from types import SimpleNamespace

from sqlalchemy import event, text

from adapter.db import FairLock, make_engine, make_sessionmaker, raw_transaction, read_transaction, transaction
from adapter.stored_work import process_all
from adapter.waiting import BACKGROUND_SHARE, Waiting
from tests.harness import write_lock_held


def _queue_up(lock: FairLock, name: str, order: list[str], *, priority: bool = False) -> threading.Thread:
    def run() -> None:
        lock.acquire(priority=priority)
        order.append(name)
        lock.release()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _wait_until_waiting(lock: FairLock, count: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with lock._cond:
            if lock._next_ticket - lock._serving - 1 + lock._priority_waiting >= count:
                return
        time.sleep(0.001)
    raise AssertionError("waiters did not queue up")


def test_ordinary_waiters_are_served_in_arrival_order_and_a_priority_one_goes_first():
    lock = FairLock()
    order: list[str] = []
    lock.acquire()  # held: everyone below queues
    threads = []
    for name in ("first", "second", "third"):
        threads.append(_queue_up(lock, name, order))
        _wait_until_waiting(lock, len(threads))
    threads.append(_queue_up(lock, "ack", order, priority=True))
    _wait_until_waiting(lock, 4)
    lock.release()
    for thread in threads:
        thread.join(10)
    assert order == ["ack", "first", "second", "third"]


def test_the_lock_is_reentrant_for_its_owner_and_refuses_a_release_by_another_thread():
    lock = FairLock()
    lock.acquire()
    lock.acquire(priority=True)  # the owner again: just deeper
    errors: list[Exception] = []

    def intruder() -> None:
        try:
            lock.release()
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=intruder)
    thread.start()
    thread.join(10)
    assert errors and "another thread" in str(errors[0])
    lock.release()
    lock.release()
    order: list[str] = []
    _queue_up(lock, "next", order).join(10)  # free again: taken at once
    assert order == ["next"]


def test_a_raw_transaction_commits_on_success_and_rolls_back_on_error(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'raw.db'}")
    with raw_transaction(engine) as cursor:
        cursor.execute("CREATE TABLE t (v INTEGER)")
    with raw_transaction(engine, priority=True) as cursor:
        cursor.execute("INSERT INTO t VALUES (1)")
    try:
        with raw_transaction(engine) as cursor:
            cursor.execute("INSERT INTO t VALUES (2)")
            raise ValueError("undo")
    except ValueError:
        pass
    with raw_transaction(engine) as cursor:
        cursor.execute("SELECT v FROM t")
        assert cursor.fetchall() == [(1,)]
    engine.dispose()


def test_waiting_is_idle_only_when_nothing_is_in_progress_and_quiet_after_a_pause():
    waiting = Waiting()
    assert waiting.idle.is_set() and waiting.quiet_seconds() == math.inf  # nothing ever arrived
    waiting.begin()
    waiting.begin()
    assert not waiting.idle.is_set()
    waiting.end()
    assert not waiting.idle.is_set()  # one is still in progress
    waiting.end()
    assert waiting.idle.is_set()
    assert waiting.quiet_seconds() < 5.0  # something arrived a moment ago
    with waiting:
        assert not waiting.idle.is_set() and waiting.quiet_seconds() == 0.0  # something waits
    assert waiting.idle.is_set()


def _counter_db(tmp_path, *, busy_timeout_ms: int | None = None):
    engine = make_engine(f"sqlite:///{tmp_path / 'lock.db'}")
    if busy_timeout_ms is not None:
        @event.listens_for(engine, "connect")
        def _no_wait(dbapi_conn, _record) -> None:
            dbapi_conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
    sessions = make_sessionmaker(engine)
    with transaction(sessions) as session:
        session.execute(text("CREATE TABLE n (v INTEGER)"))
        session.execute(text("INSERT INTO n VALUES (0)"))
    return engine, sessions


def test_the_next_writer_gets_in_only_after_the_commit_so_it_never_meets_sqlites_lock(tmp_path):
    # With no busy time-out, a writer let in before the previous COMMIT finished
    # would fail at once with "database is locked" (or sleep in the busy handler).
    engine, sessions = _counter_db(tmp_path, busy_timeout_ms=0)
    errors: list[Exception] = []

    def writer() -> None:
        try:
            for _ in range(150):
                with transaction(sessions) as session:
                    session.execute(text("UPDATE n SET v = v + 1"))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    with read_transaction(sessions) as session:
        assert session.scalar(text("SELECT v FROM n")) == 450
    engine.dispose()


def test_a_read_transaction_does_not_wait_for_a_writer_and_sees_the_last_commit(tmp_path):
    engine, sessions = _counter_db(tmp_path)
    inside, leave = threading.Event(), threading.Event()

    def long_writer() -> None:
        with transaction(sessions) as session:
            session.execute(text("UPDATE n SET v = 41"))
            inside.set()
            leave.wait(10)

    thread = threading.Thread(target=long_writer)
    thread.start()
    assert inside.wait(10)
    began = time.monotonic()
    with read_transaction(sessions) as session:
        seen = session.scalar(text("SELECT v FROM n"))
    waited = time.monotonic() - began
    leave.set()
    thread.join(10)
    assert seen == 0  # the uncommitted 41 is not visible
    assert waited < 5  # it did not queue behind the writer (which holds on for 10 s)
    with read_transaction(sessions) as session:
        assert session.scalar(text("SELECT v FROM n")) == 41
    engine.dispose()


def test_a_read_inside_a_write_transaction_leaves_the_writers_lock_held(tmp_path):
    engine, sessions = _counter_db(tmp_path)
    order: list[str] = []
    with transaction(sessions) as session:
        session.execute(text("UPDATE n SET v = 1"))
        with read_transaction(sessions) as reader:
            reader.scalar(text("SELECT v FROM n"))
        # Still held: another writer queues until this transaction ends.
        other = threading.Thread(target=lambda: _write_and_note(sessions, order))
        other.start()
        time.sleep(0.2)
        order.append("outer still open")
    other.join(10)
    assert order == ["outer still open", "other wrote"]
    engine.dispose()


def _write_and_note(sessions, order: list[str]) -> None:
    with transaction(sessions) as session:
        session.execute(text("UPDATE n SET v = 2"))
    order.append("other wrote")


def test_under_a_feed_that_never_pauses_background_work_keeps_to_its_share():
    waiting = Waiting()
    waiting.begin()  # a request in progress all along
    began = time.monotonic()
    waiting.wait_quiet(after=0.03)  # the previous piece of background work took 30 ms
    assert time.monotonic() - began >= 0.03 * (1 / BACKGROUND_SHARE - 1)
    began = time.monotonic()
    waiting.wait_quiet()  # after nothing: the usual moment
    assert time.monotonic() - began < 0.03 * (1 / BACKGROUND_SHARE - 1)
    waiting.end()
    began = time.monotonic()
    waiting.wait_quiet(after=10.0)  # quiet: no reason to wait the share out
    assert time.monotonic() - began < 1.0


def test_background_work_does_not_wait_when_nothing_has_arrived_for_a_while(monkeypatch):
    import adapter.waiting

    slept: list[float] = []
    # Only this module's sleeps: patching time.sleep itself would also count any other
    # thread's (one an earlier test left finishing its work).
    monkeypatch.setattr(adapter.waiting, "time", SimpleNamespace(monotonic=time.monotonic, sleep=slept.append))
    waiting = Waiting()
    waiting.wait_quiet()  # nothing has ever arrived
    assert slept == []
    waiting.begin()
    waiting.end()  # a message was just answered: its sender may send the next at once
    waiting.wait_quiet()
    assert slept == [0.002]
    slept.clear()
    waiting.begin()
    began = time.monotonic()
    while time.monotonic() - began < 0.02:  # its commit took 20 ms: it arrived long ago...
        pass
    waiting.end()  # ...but was answered just now
    assert waiting.quiet_seconds() < 0.02
    waiting.wait_quiet()
    assert slept == [0.002]


def test_each_batch_of_stored_work_waits_told_how_long_the_previous_one_took():
    told: list[float] = []
    batches = [[1, 2, 3], [4]]

    def process_batch(ids: list[int]) -> int:
        time.sleep(0.02 * len(ids[:2]))
        return len(ids[:2])

    done = process_all(lambda: batches.pop(0) if batches else [], process_batch, told.append)
    assert done == 4
    assert told[0] == 0.0 and told[1] >= 0.04 and 0.02 <= told[2] < 0.04


def test_a_raw_transaction_that_may_not_wait_gets_no_cursor_while_another_holds_the_lock(tmp_path):
    """``wait=False`` (the ACK's write on the event loop): while another thread of this
    process, or another process, holds the write lock, no cursor and no transaction,
    at once; SQLite's busy timeout is as before afterwards."""
    import sqlite3

    path = tmp_path / "raw.db"
    engine = make_engine(f"sqlite:///{path}")
    with raw_transaction(engine) as cursor:
        cursor.execute("CREATE TABLE t (v INTEGER)")
    with write_lock_held(make_sessionmaker(engine), "INSERT INTO t VALUES (1)") as holder:
        with raw_transaction(engine, wait=False) as cursor:
            assert cursor is None
        assert holder.is_alive()

    other_process = sqlite3.connect(path, isolation_level=None)
    other_process.execute("BEGIN IMMEDIATE")
    answered = []
    attempt = threading.Thread(target=lambda: answered.append(_cursor_if_free(engine)))
    attempt.start()
    attempt.join(5)  # SQLite's busy handler would keep it 30 s
    assert answered == [None]
    other_process.execute("ROLLBACK")

    with raw_transaction(engine, wait=False) as cursor:
        cursor.execute("INSERT INTO t VALUES (2)")
        cursor.execute("PRAGMA busy_timeout")
        assert cursor.fetchone()[0] == 30_000
    with raw_transaction(engine) as cursor:
        cursor.execute("SELECT v FROM t ORDER BY v")
        assert cursor.fetchall() == [(1,), (2,)]
    other_process.close()
    engine.dispose()


def _cursor_if_free(engine):
    with raw_transaction(engine, wait=False) as cursor:
        return cursor


def test_a_write_on_the_loop_whose_connection_fails_before_its_begin_leaves_the_lock_free():
    """Whatever fails between taking the write lock and BEGIN (here a connection closed
    under it), the lock is not kept: kept, every later write would wait for it for ever."""
    import sqlite3

    import pytest

    from adapter.db import _begin_immediate_if_free

    lock = FairLock()
    connection = sqlite3.connect(":memory:", isolation_level=None)
    cursor = connection.cursor()
    connection.close()
    with pytest.raises(sqlite3.ProgrammingError):
        _begin_immediate_if_free(lock, cursor)
    assert lock.acquire_if_free()
    lock.release()
