"""Claiming due notifications so that any number of workers can run.

One statement marks a small batch ``claimed`` with a lease (DESIGN.md "How work is
claimed"): on PostgreSQL the batch is chosen ``FOR UPDATE SKIP LOCKED``, so two
workers never take the same row and never wait on each other; on SQLite the
engine opens every transaction with ``BEGIN IMMEDIATE``, which serialises
claimers. A claim whose lease expired (its worker died) is claimable again; the
idempotency key makes that second attempt safe at the provider.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, and_, select, update
from sqlalchemy.orm import Session

from adapter.models import Notification


def claim_due(session: Session, *, now: datetime, limit: int, lease: timedelta) -> list[int]:
    """Claim up to ``limit`` due notifications; return their ids. The cost grows
    with what is due (index on status, scheduled_for), not with what is stored."""
    due = (
        select(Notification.id)
        .where(
            or_(
                and_(Notification.status == "scheduled", Notification.scheduled_for <= now),
                and_(Notification.status == "claimed", Notification.claimed_until < now),
            )
        )
        .order_by(Notification.scheduled_for)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    ids = list(session.scalars(due))
    if not ids:
        return []
    # By id alone: the rows cannot have changed since the SELECT (SQLite: this
    # transaction holds the write lock from its BEGIN IMMEDIATE; PostgreSQL: FOR UPDATE
    # locked them). Repeating its condition here led SQLite to the status index, which
    # reads every scheduled notification, due or not.
    claimed = session.scalars(
        update(Notification)
        .where(Notification.id.in_(ids))
        .values(status="claimed", claimed_until=now + lease, status_at=now)
        .returning(Notification.id)
    )
    return sorted(claimed)


def release(session: Session, notification_id: int, *, at: datetime, now: datetime, error: str) -> None:
    """Put a claimed notification back for a later attempt."""
    session.execute(
        update(Notification)
        .where(Notification.id == notification_id, Notification.status == "claimed")
        .values(status="scheduled", scheduled_for=at, claimed_until=None, last_error=error[:200], status_at=now)
    )
