"""A message the provider accepted is sent once, even when writing down that it was
accepted fails for a while: the outcome is recorded again until it lands, so the
notification's claim does not run out still ``claimed`` and go to the wire a second time
(WhatsApp, Telegram and SMS do not de-duplicate).

Real pipeline and dispatcher; WhatsAppChannel against :class:`FakeWhatsApp`, whose
``deliveries`` counts what reached the patient; the failure is the database's own: a
trigger refusing the write of ``sent`` (SQLite), or ending the connection that makes it
(PostgreSQL), dropped once the outcome has failed to land."""

from __future__ import annotations

import asyncio
from contextlib import contextmanager
import logging
import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from adapter.clock import FrozenClock
from channels.fakes import FakeWhatsApp
from tests.core.test_dispatch_leases import LEASE_S, book, settings
from tests.core.test_send_time_checks import confirmations
from tests.harness import migrated_container

# Refuses the write that says the provider accepted the message; nothing else.
SQLITE_OUTAGE = """CREATE TRIGGER outage BEFORE UPDATE OF status ON notification WHEN NEW.status = 'sent'
                   BEGIN SELECT RAISE(ABORT, 'database unavailable'); END"""
# The connection that writes it is ended by the server mid-transaction, as in a failover.
PG_OUTAGE = ["""CREATE FUNCTION outage() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NEW; END $$""",
             """CREATE TRIGGER outage BEFORE UPDATE OF status ON notification
                FOR EACH ROW WHEN (NEW.status = 'sent') EXECUTE FUNCTION outage()"""]


class _Failed(logging.Handler):
    """Set once the dispatcher logs that an outcome could not be recorded."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "recording the outcome" in record.getMessage():
            self.seen.set()


def _accepted_while_the_database_refuses_it(tmp_path, url: str | None, outage: list[str], end_outage: list[str]):
    clock = FrozenClock(datetime.now(UTC))
    failed = _Failed()
    logging.getLogger("adapter.dispatch").addHandler(failed)
    with FakeWhatsApp() as fake:
        container = migrated_container(settings(tmp_path, url or f"sqlite:///{tmp_path / 'adapter.db'}", fake), clock)
        try:
            book(container, clock, patients=1)
            with container.engine.begin() as connection:
                for statement in outage:
                    connection.execute(text(statement))

            async def scenario() -> int:
                first = asyncio.create_task(container.dispatcher.run_once())
                for _ in range(3000):  # 30 s at most: the outage ends whatever happened
                    if failed.seen.is_set() or first.done():
                        break
                    await asyncio.sleep(0.01)
                with container.engine.begin() as connection:  # the database is back
                    for statement in end_outage:
                        connection.execute(text(statement))
                await first
                clock.advance(timedelta(seconds=LEASE_S + 1))  # the first round's lease has run out
                return await container.dispatcher.run_once()

            claimed_again = asyncio.run(scenario())
            (row,) = confirmations(container)
        finally:
            logging.getLogger("adapter.dispatch").removeHandler(failed)
            container.engine.dispose()
    assert failed.seen.is_set()  # recording did fail
    assert fake.deliveries[row.idempotency_key] == 1
    assert claimed_again == 0
    assert row.status == "sent" and row.provider_message_id is not None and row.claimed_until is None


def test_an_accepted_message_whose_outcome_could_not_be_written_is_recorded_once_it_can_and_not_sent_again(tmp_path):
    _accepted_while_the_database_refuses_it(tmp_path, None, [SQLITE_OUTAGE], ["DROP TRIGGER outage"])


def test_an_accepted_message_whose_connection_dropped_while_recording_it_is_not_sent_again(tmp_path, pg_url):
    _accepted_while_the_database_refuses_it(tmp_path, pg_url, PG_OUTAGE,
                                            ["DROP TRIGGER outage ON notification", "DROP FUNCTION outage()"])


@contextmanager
def _a_booking_whose_outcome_is_refused(tmp_path, clock: FrozenClock):  # noqa: ANN001, ANN202
    """One booking on SQLite, WhatsApp served by a fake, and a trigger that refuses to record
    any outcome of its confirmation: (container, the log handler that sees the refusals, the
    fake)."""
    failed = _Failed()
    logging.getLogger("adapter.dispatch").addHandler(failed)
    with FakeWhatsApp() as fake:
        container = migrated_container(settings(tmp_path, f"sqlite:///{tmp_path / 'adapter.db'}", fake), clock)
        try:
            book(container, clock, patients=1)
            with container.engine.begin() as connection:
                connection.execute(text(SQLITE_OUTAGE))
            yield container, failed, fake
        finally:
            logging.getLogger("adapter.dispatch").removeHandler(failed)
            container.engine.dispose()


async def _sending_until_refused(container, failed: _Failed) -> asyncio.Task:  # noqa: ANN001
    """A dispatcher round started, once the database has refused to record its outcome
    (or after 30 s): the round, still running."""
    first = asyncio.create_task(container.dispatcher.run_once())
    for _ in range(3000):
        if failed.seen.is_set():
            break
        await asyncio.sleep(0.01)
    return first


def test_an_outcome_the_database_always_refuses_is_given_up_a_lease_past_its_claim(tmp_path, caplog):
    """Else that one notification would hold every later round of this process."""
    clock = FrozenClock(datetime.now(UTC))
    with _a_booking_whose_outcome_is_refused(tmp_path, clock) as (container, failed, _):
        async def scenario() -> bool:
            first = await _sending_until_refused(container, failed)
            await asyncio.sleep(0.5)
            held = not first.done()  # the outage goes on: still trying
            clock.advance(timedelta(seconds=2 * LEASE_S + 1))
            await asyncio.wait_for(first, 30)
            return held

        with caplog.at_level(logging.ERROR, logger="adapter.dispatch"):
            held = asyncio.run(scenario())
    assert held
    assert any("gave up recording the outcome" in r.getMessage() for r in caplog.records)


def test_a_message_recorded_late_is_dated_when_the_provider_accepted_it_not_when_the_record_landed(tmp_path):
    """``sent_at`` and the audit entry ("sent") are when the provider accepted the message, by
    the adapter's clock as the channel answered; ``status_at`` is when that was recorded. Both
    were the record's time, so an outcome recorded again after a failed write was shown to
    the compliance officer (audit, export) as sent seconds after it was."""
    accepted_at = datetime.now(UTC).replace(microsecond=0)
    clock = FrozenClock(accepted_at)
    with _a_booking_whose_outcome_is_refused(tmp_path, clock) as (container, failed, fake):
        async def scenario() -> None:
            first = await _sending_until_refused(container, failed)
            # Recorded 3 s after the acceptance: past the claim's lease, before recording is given up.
            clock.advance(timedelta(seconds=3))
            with container.engine.begin() as connection:
                connection.execute(text("DROP TRIGGER outage"))
            await asyncio.wait_for(first, 30)

        asyncio.run(scenario())
        (row,) = confirmations(container)
        with container.sessions() as session:
            sent = [entry.at for entry in container.audit.entries(session) if entry.action == "sent"]
    assert failed.seen.is_set() and fake.deliveries[row.idempotency_key] == 1
    assert row.status == "sent"
    assert (row.sent_at, row.status_at) == (accepted_at, accepted_at + timedelta(seconds=3))
    assert sent == [accepted_at]
