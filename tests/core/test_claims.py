"""Claiming due notifications (adapter.scheduler.claim_due): each is claimed once while
its lease runs, again once it has run out, and the work of a claim grows with what is
due, not with what is stored."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, text

from adapter.db import transaction
from adapter.models import Notification
from adapter.scheduler import claim_due
from tests.core.test_pipeline_batch import NOW, booking, container_for, copy_scheduled
from tests.harness import SqliteSteps

LEASE = timedelta(minutes=2)


def _claim(container, at) -> list[int]:  # noqa: ANN001
    with transaction(container.sessions) as session:
        return claim_due(session, now=at, limit=50, lease=LEASE)


def test_a_due_notification_is_claimed_once_per_lease(tmp_path, database_url):
    container = container_for(tmp_path, database_url)
    try:
        with transaction(container.sessions) as session:
            container.pipeline.handle(session, [booking("C1", "C1")], now=NOW)
        at = NOW + timedelta(minutes=1)
        with transaction(container.sessions) as session:
            due = list(session.scalars(select(Notification.id).where(Notification.scheduled_for <= at)))
        assert len(due) == 1  # the booking confirmation; the reminders and the follow-up wait
        assert _claim(container, at) == due
        assert _claim(container, at + timedelta(seconds=30)) == []  # its lease runs
        assert _claim(container, at + LEASE + timedelta(seconds=1)) == due  # run out: claimed again
        with transaction(container.sessions) as session:
            row = session.get(Notification, due[0])
            assert row.status == "claimed" and row.claimed_until > at + LEASE
    finally:
        container.engine.dispose()


def test_the_work_of_a_claim_does_not_grow_with_what_waits_for_later(tmp_path):
    container = container_for(tmp_path, None)
    steps = SqliteSteps(container.engine)
    try:
        def claim_confirmations(prefix: str) -> int:
            """The SQLite steps of claiming 30 bookings' confirmations at once."""
            with transaction(container.sessions) as session:
                for n in range(30):
                    container.pipeline.handle(session, [booking(f"{prefix}{n}", f"{prefix}{n}")], now=NOW)
            steps.reset()
            assert len(_claim(container, NOW + timedelta(minutes=1))) == 30
            return steps.count

        few = claim_confirmations("W")
        with container.engine.begin() as connection:  # 27,000 notifications due later
            copy_scheduled(connection, 300, after=NOW + timedelta(minutes=1))
            assert connection.scalar(text("SELECT count(*) FROM notification WHERE status = 'scheduled'")) > 25_000
        many = claim_confirmations("X")
        assert few > 0 and many < 2 * few, (few, many)
    finally:
        container.engine.dispose()


def test_the_work_of_a_claim_does_not_grow_with_what_is_due_and_the_longest_due_go_first(tmp_path):
    """The sending window opening on a night's reminders: thousands due at once, claimed
    50 at a time, each claim as cheap as with few due."""
    container = container_for(tmp_path, None)
    steps = SqliteSteps(container.engine)
    try:
        with transaction(container.sessions) as session:
            for n in range(30):
                container.pipeline.handle(session, [booking(f"D{n}", f"D{n}")], now=NOW)
        everything = NOW + timedelta(days=30)  # every notification is due by then

        def claim() -> tuple[list[int], int]:
            steps.reset()
            return _claim(container, everything), steps.count

        claimed, few = claim()
        with container.engine.begin() as connection:
            connection.execute(text("UPDATE notification SET status = 'scheduled', claimed_until = NULL"))
            copy_scheduled(connection, 300)
            assert connection.scalar(text("SELECT count(*) FROM notification WHERE status = 'scheduled'")) > 30_000
            first = [i for (i,) in connection.execute(text(
                "SELECT id FROM notification ORDER BY scheduled_for, id LIMIT 50"))]
        claimed, many = claim()
        assert claimed == sorted(first)
        assert few > 0 and many < 2 * few, (few, many)
    finally:
        container.engine.dispose()
