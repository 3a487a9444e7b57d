"""Application ACKs (enhanced mode, HL7 v2.5 §2.9.3) on their way to the sender's
listener: a real MLLP listener on 127.0.0.1 plays the hospital, time is a FrozenClock."""

from __future__ import annotations

import asyncio
import shutil
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event, select

from adapter.app_acks import ApplicationAckSender
from adapter.bootstrap import Container, build
from adapter.clock import FrozenClock
from adapter.db import read_transaction
from adapter.models import ApplicationAck
from adapter.writeback import LEASE
from tests.core.test_end_to_end import siu
from tests.core.test_hl7_flows import enhanced
from tests.core.test_replies import MllpListener
from tests.harness import migrated_container, settings_for

NOW = datetime.now(UTC).replace(microsecond=0)


class OversizeFirst(MllpListener):
    """Answers the first message with a frame larger than any ACK may be, then AA."""

    async def _handle(self, message: bytes) -> bytes:
        if not self.received:
            self.received.append(message.decode())
            return b"MSH|^~\\&|" + b"x" * (10 * 1024 * 1024 + 1)
        return await super()._handle(message)


class SlowHospital(MllpListener):
    """Takes a whole claim lease (``LEASE`` on ``clock``) to answer its first message."""

    def __init__(self, clock: FrozenClock) -> None:
        self.clock = clock
        super().__init__()

    async def _handle(self, message: bytes) -> bytes:
        if not self.received:
            self.clock.advance(LEASE)
        return await super()._handle(message)


def free_port() -> int:
    """A port nothing listens on (the hospital's listener is down)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def adapter_for(tmp_path: Path, listener_port: int, clock: FrozenClock, **settings: object) -> Container:
    """A container whose every sender's listener (``writeback``, also for a patient's
    cancellation, as SIU^S15) is on ``listener_port``."""
    config = tmp_path / "config"
    shutil.copytree("config", config)
    (config / "facilities.yaml").write_text(
        "facilities:\n  default:\n    start_time: [SCH-11]\n    cancellation_writeback: SIU^S15\n"
        f"    writeback: {{host: 127.0.0.1, port: {listener_port}}}\n"
    )
    return migrated_container(settings_for(tmp_path, config_dir=config, **settings), clock)


def owe_application_acks(container: Container, *control_ids: str) -> None:
    """The hospital sends bookings asking for an application ACK always (MSH-16 AL);
    they are stored, acknowledged CA, and processed."""
    start = NOW + timedelta(days=2)

    async def receive() -> None:
        for control_id in control_ids:
            ack = await container.intake.handle(enhanced(siu("S12", control_id, start), "AL", "AL"))
            assert b"MSA|CA|" in ack
        await container.intake.writer.stop()

    asyncio.run(receive())
    container.intake.process_pending()


def retry_while_down(container: Container, clock: FrozenClock, *, until: datetime,
                     sender: Any = None, outbox: Any = ApplicationAck) -> list[timedelta]:
    """Run ``sender`` (the application ACK sender by default) at each next attempt of
    its ``outbox`` table until ``until`` or until none is pending; the gaps between
    attempts."""
    sender, gaps = sender or ApplicationAckSender(container), []
    while clock.now() < until:
        with read_transaction(container.sessions) as session:
            due = session.scalar(select(outbox.next_attempt_at).where(outbox.status == "pending")
                                 .order_by(outbox.next_attempt_at).limit(1))
        if due is None:
            break
        gaps.append(max(due, clock.now()) - clock.now())
        clock.set(max(due, clock.now()))
        asyncio.run(sender.run_once())
    return gaps


def ack_rows(container: Container) -> list[tuple[str, int, str | None]]:
    with read_transaction(container.sessions) as session:
        rows = session.execute(select(ApplicationAck.status, ApplicationAck.attempts, ApplicationAck.last_error)
                               .order_by(ApplicationAck.id))
        return [tuple(row) for row in rows]


def test_an_answer_too_large_to_be_an_ack_is_a_failed_attempt_retried_later(tmp_path):
    listener = OversizeFirst()
    clock = FrozenClock(NOW)
    try:
        container = adapter_for(tmp_path, listener.server.port, clock)
        owe_application_acks(container, "BIG1")
        sender = ApplicationAckSender(container)
        assert asyncio.run(sender.run_once()) == 1
        [(status, attempts, error)] = ack_rows(container)
        assert (status, attempts) == ("pending", 1) and error.startswith("MLLP: MLLPClientError")

        clock.advance(timedelta(minutes=1))
        asyncio.run(sender.run_once())
        assert ack_rows(container) == [("done", 2, None)]
        assert len(listener.received) == 2
    finally:
        listener.stop()


def test_an_application_ack_is_retried_through_a_night_of_listener_downtime_then_delivered(tmp_path):
    port = free_port()
    clock = FrozenClock(NOW)
    container = adapter_for(tmp_path, port, clock)
    owe_application_acks(container, "NIGHT1")

    gaps = retry_while_down(container, clock, until=NOW + timedelta(hours=14))
    [(status, attempts, error)] = ack_rows(container)
    assert (status, error) == ("pending", "MLLP: ConnectionRefusedError")
    assert attempts > 80 and max(gaps) <= timedelta(minutes=10)

    listener = MllpListener(port=port)  # the interface engine is back in the morning
    try:
        retry_while_down(container, clock, until=clock.now() + timedelta(minutes=11))
        assert ack_rows(container) == [("done", attempts + 1, None)]
        assert len(listener.received) == 1 and "MSA|AA|NIGHT1" in listener.received[0]
    finally:
        listener.stop()


def test_an_application_ack_is_given_up_only_after_the_configured_retry_period(tmp_path):
    clock = FrozenClock(NOW)
    container = adapter_for(tmp_path, free_port(), clock, hospital_retry_hours=2)
    owe_application_acks(container, "GONE1")

    retry_while_down(container, clock, until=NOW + timedelta(hours=1, minutes=50))
    assert ack_rows(container)[0][0] == "pending"
    retry_while_down(container, clock, until=NOW + timedelta(hours=3))
    [(status, _, error)] = ack_rows(container)
    assert status == "failed" and error == "MLLP: ConnectionRefusedError"
    assert NOW + timedelta(hours=2) <= clock.now() <= NOW + timedelta(hours=2, minutes=10)


def claimed_at_once(first: Container, second: Container, table: str, run: Callable[[Container], None],
                    *, or_when: Callable[[], bool] = lambda: False) -> None:
    """``run(first)`` and ``run(second)`` (two senders, as in two worker processes) at the
    worst moment: ``first`` stops right after it read what is due from ``table`` and
    waits there until ``second`` has finished its round (or ``or_when()``)."""
    first_read, second_done = threading.Event(), threading.Event()

    def pause_after_reading_due(conn, cursor, statement: str, *_: object) -> None:  # noqa: ANN001
        if (statement.lstrip().startswith("SELECT") and f"{table}.next_attempt_at <=" in statement
                and not first_read.is_set()):
            first_read.set()
            for _ in range(1000):
                if second_done.wait(0.01) or or_when():
                    return

    def run_second() -> None:
        try:
            run(second)
        finally:
            second_done.set()

    event.listen(first.engine, "after_cursor_execute", pause_after_reading_due)
    threads = [threading.Thread(target=run, args=(first,)), threading.Thread(target=run_second)]
    threads[0].start()
    assert first_read.wait(10)
    threads[1].start()
    for thread in threads:
        thread.join(30)


def test_two_senders_on_postgresql_never_send_the_same_application_ack(tmp_path, pg_url):
    listener = MllpListener()
    try:
        clock = FrozenClock(NOW)
        first = adapter_for(tmp_path, listener.server.port, clock, database_url=pg_url)
        second = build(first.settings, clock=clock)
        owe_application_acks(first, "ONCE1", "ONCE2")

        claimed_at_once(first, second, "application_ack", lambda c: asyncio.run(ApplicationAckSender(c).run_once()))
        assert sorted(m.split("MSA|")[1].split("\r")[0] for m in listener.received) == ["AA|ONCE1", "AA|ONCE2"]
        assert ack_rows(first) == [("done", 1, None), ("done", 1, None)]
    finally:
        listener.stop()


def test_a_sender_starts_no_attempt_its_claim_may_not_outlast(tmp_path):
    clock = FrozenClock(NOW)
    listener = SlowHospital(clock)
    try:
        container = adapter_for(tmp_path, listener.server.port, clock)
        owe_application_acks(container, "SLOW1", "SLOW2")
        sender = ApplicationAckSender(container)
        asyncio.run(sender.run_once())
        # The first answer took the whole lease: SLOW2 may be another sender's by now.
        assert len(listener.received) == 1
        assert ack_rows(container) == [("done", 1, None), ("pending", 0, None)]
        asyncio.run(sender.run_once())  # its lease is over: due again at once
        assert ack_rows(container) == [("done", 1, None), ("done", 1, None)]
        assert len(listener.received) == 2
    finally:
        listener.stop()


def test_a_replay_tells_the_sender_again_only_when_the_verdict_changes(tmp_path):
    """A replay that fails as before owes the hospital nothing new: a second identical
    AE would read as a second failure. One that now succeeds sends the AA."""
    from adapter.models import InboundMessage

    listener, clock = MllpListener(), FrozenClock(NOW)
    try:
        container = adapter_for(tmp_path, listener.server.port, clock)  # start time from SCH-11 only
        start = NOW + timedelta(days=2)
        without_sch11 = siu("S12", "RPL1", start).replace(f"|^^^{start.strftime('%Y%m%d%H%M%S+0000')}|".encode(), b"||")

        async def receive() -> None:
            assert b"MSA|CA|" in await container.intake.handle(enhanced(without_sch11, "AL", "AL"))
            await container.intake.writer.stop()

        asyncio.run(receive())
        container.intake.process_pending()
        with read_transaction(container.sessions) as session:
            message_id = session.scalar(select(InboundMessage.id).where(InboundMessage.control_id == "RPL1"))
        retry_while_down(container, clock, until=clock.now() + timedelta(minutes=1))
        assert [m.split("MSA|")[1][:2] for m in listener.received] == ["AE"]

        assert container.intake.replay([message_id]) == {message_id: "error"}  # nothing fixed yet
        retry_while_down(container, clock, until=clock.now() + timedelta(minutes=1))
        assert [m.split("MSA|")[1][:2] for m in listener.received] == ["AE"]

        fixed = tmp_path / "config"
        facilities = (fixed / "facilities.yaml").read_text().replace("start_time: [SCH-11]", "start_time: [SCH-11, AIS-4]")
        (fixed / "facilities.yaml").write_text(facilities)
        container = migrated_container(settings_for(tmp_path, config_dir=fixed), clock)
        assert container.intake.replay([message_id]) == {message_id: "processed"}
        retry_while_down(container, clock, until=clock.now() + timedelta(minutes=1))
        assert [m.split("MSA|")[1][:2] for m in listener.received] == ["AE", "AA"]
    finally:
        listener.stop()
