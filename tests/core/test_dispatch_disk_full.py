"""A message the provider accepted just as the disk filled is sent once: its outcome,
which needs space to be written, waits in memory until space returns and is written
then, however long that takes, and the notification's claim is held meanwhile, so no
dispatcher claims it again and sends it a second time.

Real pipeline and dispatchers on SQLite (each with its own engine, as two processes
have); WhatsAppChannel against :class:`FakeWhatsApp`, which does not de-duplicate:
``deliveries`` counts what reached the patient. "Full" is ``PRAGMA max_page_count`` on
every connection (tests/core/test_disk_full.py) with no free page left in the file. The
clinic's name is longer than a page, so the body the outcome stores needs new pages,
while a claim (a row rewritten in place) does not: as on a real full disk, where a
rewrite can find room that a growing write cannot."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text

from adapter.bootstrap import Container, build
from adapter.clock import FrozenClock
from channels.fakes import FakeWhatsApp
from tests.core.test_disk_full import Disk, a_disk
from tests.core.test_dispatch_leases import LEASE_S, book, settings
from tests.core.test_dispatch_records import _Failed
from tests.core.test_send_time_checks import confirmations
from tests.harness import migrated_container

LONG_CLINIC_NAME = "Poliambulatorio " + "San Luca " * 600  # about 5 kB: more than a page


def _no_free_page(engine: Engine) -> None:
    """Take up the file's free pages, so that a write needing space must grow it."""
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE scratch (filler BLOB)"))
        page_size = connection.execute(text("PRAGMA page_size")).scalar_one()
        free = connection.execute(text("PRAGMA freelist_count")).scalar_one()
        connection.execute(text("INSERT INTO scratch VALUES (zeroblob(:n))"), {"n": (free + 2) * page_size})
        assert connection.execute(text("PRAGMA freelist_count")).scalar_one() == 0


@contextmanager
def _one_booking_on_a_disk(tmp_path, clock: FrozenClock) -> Iterator[tuple[Disk, FakeWhatsApp, Container, Container, _Failed]]:  # noqa: ANN001
    """One booking whose confirmation is due; two dispatchers (``first`` and ``other``)
    on the same SQLite file, on a disk to fill; and the log handler that sees an outcome
    fail to be recorded."""
    failed = _Failed()
    logging.getLogger("adapter.dispatch").addHandler(failed)
    with a_disk() as disk, FakeWhatsApp() as fake:
        config = settings(tmp_path, f"sqlite:///{tmp_path / 'adapter.db'}", fake, clinic_name=LONG_CLINIC_NAME)
        first = migrated_container(config, clock)
        other = build(config, clock=clock)
        try:
            book(first, clock, patients=1)
            _no_free_page(first.engine)
            yield disk, fake, first, other, failed
        finally:
            logging.getLogger("adapter.dispatch").removeHandler(failed)
            first.engine.dispose()
            other.engine.dispose()


async def _until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Wait until ``condition()`` holds, or ``seconds`` have passed."""
    for _ in range(int(seconds * 100)):
        if condition():
            return
        await asyncio.sleep(0.01)


def _claimed_past(container: Container, clock: FrozenClock) -> bool:
    (row,) = confirmations(container)
    return row.claimed_until is not None and row.claimed_until > clock.now()


def test_a_message_accepted_as_the_disk_filled_is_recorded_sent_when_space_returns_and_not_sent_again(tmp_path):
    clock = FrozenClock(datetime.now(UTC))
    with _one_booking_on_a_disk(tmp_path, clock) as (disk, fake, first, _, failed):
        async def scenario() -> int:
            disk.fill()
            round_one = asyncio.create_task(first.dispatcher.run_once())
            await _until(failed.seen.is_set)
            # Full for longer than a lease past the claim's, when recording used to be given up.
            clock.advance(timedelta(seconds=2 * LEASE_S + 1))
            await _until(lambda: round_one.done() or _claimed_past(first, clock))
            disk.free()
            await asyncio.wait_for(round_one, 30)
            clock.advance(timedelta(seconds=LEASE_S + 1))  # any claim of the first round has run out
            return await first.dispatcher.run_once()

        claimed_again = asyncio.run(scenario())
        (row,) = confirmations(first)
    assert failed.seen.is_set()  # the outcome could not be written at first
    assert fake.deliveries[row.idempotency_key] == 1
    assert claimed_again == 0
    assert row.status == "sent" and row.provider_message_id is not None and row.claimed_until is None


def test_while_an_accepted_message_waits_for_space_to_be_recorded_no_other_dispatcher_claims_it(tmp_path):
    """A Celery worker's claim loop, or a second ``serve``: the first claim's lease runs
    out while the disk is still full, and claiming (a rewrite in place) would succeed."""
    clock = FrozenClock(datetime.now(UTC))
    with _one_booking_on_a_disk(tmp_path, clock) as (disk, fake, first, other, failed):
        async def scenario() -> int:
            disk.fill()
            round_one = asyncio.create_task(first.dispatcher.run_once())
            await _until(failed.seen.is_set)
            clock.advance(timedelta(seconds=LEASE_S + 1))  # the first claim's lease has run out
            await _until(lambda: _claimed_past(first, clock), 5)
            round_two = asyncio.create_task(other.dispatcher.run_once())
            await asyncio.wait({round_two}, timeout=5)
            disk.free()
            await asyncio.wait_for(round_one, 30)
            return await asyncio.wait_for(round_two, 30)

        claimed_by_other = asyncio.run(scenario())
        (row,) = confirmations(first)
    assert fake.deliveries[row.idempotency_key] == 1
    assert claimed_by_other == 0
    assert row.status == "sent" and row.claimed_until is None
