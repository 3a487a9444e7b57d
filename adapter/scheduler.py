"""Claiming due notifications so that any number of workers can run.

One statement marks a small batch ``claimed`` with a lease (DESIGN.md "How work is
claimed"): on PostgreSQL the batch is chosen ``FOR UPDATE SKIP LOCKED``, so two
workers never take the same row and never wait on each other; on SQLite the
engine opens every transaction with ``BEGIN IMMEDIATE``, which serialises
claimers. A claim whose lease expired (its worker died, or held it too long) is
claimable again. Each claim sets ``claimed_until = now + lease``, which tells it from a
later claim of the same row: the dispatcher acts on a notification only while it is
still its claim, and starts an attempt only if it ends before the lease does
(``adapter/dispatch.py``), since not every provider de-duplicates by idempotency key.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Row, select, update
from sqlalchemy.orm import Session

from adapter.models import Notification


def claim_due(session: Session, *, now: datetime, limit: int, lease: timedelta) -> list[int]:
    """Claim up to ``limit`` due notifications, the longest due first; return their ids.
    The cost grows with ``limit``, not with what is due or stored: the scheduled ones
    due and the claims whose lease ran out are each read in time order from the
    ``(status, scheduled_for)`` index, ``limit`` at most, and merged here. (One query
    with an OR of the two sorted everything due: claiming 50 with 36,000 due, as when
    the sending window opens on a night's reminders, took 438,000 SQLite steps instead
    of 5,000.)"""
    def oldest(*where: ColumnElement[bool]) -> list[Row[tuple[int, datetime]]]:
        query = (select(Notification.id, Notification.scheduled_for).where(*where)
                 .order_by(Notification.scheduled_for, Notification.id).limit(limit))
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        return list(session.execute(query))

    candidates = (oldest(Notification.status == "scheduled", Notification.scheduled_for <= now)
                  + oldest(Notification.status == "claimed", Notification.claimed_until < now))
    ids = [row.id for row in sorted(candidates, key=lambda row: (row.scheduled_for, row.id))[:limit]]
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


def hold(session: Session, notification_id: int, *, leased_until: datetime, until: datetime) -> bool:
    """Extend the claim of a notification whose lease runs out at ``leased_until`` (its
    token) to ``until``; False when it is no longer that claim. A rewrite of the row in
    place, as a claim is: whatever refuses it for want of space refuses a claim too."""
    held = session.execute(
        update(Notification)
        .where(Notification.id == notification_id, Notification.status == "claimed",
               Notification.claimed_until == leased_until)
        .values(claimed_until=until)
    )
    return held.rowcount == 1


def release(session: Session, notification_id: int, *, at: datetime, now: datetime, error: str,
            was: str = "claimed") -> None:
    """Put a claimed notification (or one ``was``: a ``sent`` one its provider then
    reported failed) back for a later attempt."""
    session.execute(
        update(Notification)
        .where(Notification.id == notification_id, Notification.status == was)
        .values(status="scheduled", scheduled_for=at, claimed_until=None, last_error=error[:200], status_at=now)
    )
