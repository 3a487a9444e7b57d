"""Inbound work stored before it was answered (HL7 messages, FHIR versions) and
processed afterwards, oldest first: what the HL7 and FHIR intakes share."""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from adapter.db import hold_until_commit, read_transaction
from adapter.models import InboundMessage


# A transaction of stored work holds the write lock, and an HL7 message or a FHIR
# write that arrives meanwhile waits for it: it may take this share of the time the
# feeds have been quiet (the next arrival is likely about as far off). Under an HL7
# feed of 50 messages a second, chunks of 16 FHIR versions begun in a 10 ms gap held
# the lock 40-90 ms.
HOLD_SHARE_OF_QUIET = 0.5


def take_turn_applying(session: Session) -> None:
    """Wait until no other process applies stored work, and keep the turn until this
    transaction ends: on PostgreSQL every ``serve`` process and every worker applies
    what it finds stored (a ``serve`` whose sender wants the ACK after processing, its
    own message at once), and two messages about the same new patient applied side by
    side both created the patient: the second failed on the unique identifier and went
    to the error store. Taken first, before any row lock. SQLite has one writer anyway."""
    hold_until_commit(session, "adapter.inbound.apply")


def chunk_for(quiet_s: float, seconds_each: float, limit: int) -> int:
    """How many stored items to apply in one transaction: as many as take
    ``HOLD_SHARE_OF_QUIET`` of ``quiet_s`` at ``seconds_each`` (timed on the
    chunks before); one at least, ``limit`` at most.

    >>> chunk_for(0.0, 0.001, 32), chunk_for(0.010, 0.001, 32), chunk_for(float("inf"), 0.001, 32)
    (1, 5, 32)
    """
    if quiet_s * HOLD_SHARE_OF_QUIET >= limit * seconds_each:
        return limit
    return max(1, int(quiet_s * HOLD_SHARE_OF_QUIET / seconds_each))


def stored_ids(sessions: sessionmaker[Session], source: str, limit: int = 500) -> list[int]:
    """The oldest ``limit`` rows of ``source`` still waiting to be processed (a read:
    no write lock; whoever processes them locks and re-reads each)."""
    with read_transaction(sessions) as session:
        return list(session.scalars(
            select(InboundMessage.id)
            .where(InboundMessage.source == source, InboundMessage.status == "stored")
            .order_by(InboundMessage.id)
            .limit(limit)))


def process_all(
    pending: Callable[[], list[int]], process_batch: Callable[[list[int]], int],
    wait_quiet: Callable[[float], None],
) -> int:
    """Process everything ``pending()`` finds, batch after batch, letting those a
    client waits on go first (``wait_quiet``, told how long the previous batch
    took) before each."""
    done = 0
    took = 0.0
    while ids := pending():
        while ids:
            wait_quiet(took)
            began = time.perf_counter()
            count = process_batch(ids)
            took = time.perf_counter() - began
            ids = ids[count:]
            done += count
    return done
