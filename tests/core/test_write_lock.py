"""The SQLite write lock of one process (adapter.db.FairLock), raw transactions
and the Waiting signal that background work gives way to."""

from __future__ import annotations

import threading
import time

from adapter.db import FairLock, make_engine, raw_transaction
from adapter.waiting import Waiting


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
    assert waiting.idle.is_set() and waiting.quiet_for(0.0)
    waiting.begin()
    waiting.begin()
    assert not waiting.idle.is_set()
    waiting.end()
    assert not waiting.idle.is_set()  # one is still in progress
    waiting.end()
    assert waiting.idle.is_set()
    assert not waiting.quiet_for(5.0)  # something arrived a moment ago
    with waiting:
        assert not waiting.idle.is_set()
    assert waiting.idle.is_set()
