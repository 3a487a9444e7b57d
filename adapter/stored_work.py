"""Inbound work stored before it was answered (HL7 messages, FHIR versions) and
processed afterwards, oldest first: what the HL7 and FHIR intakes share."""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from adapter.db import read_transaction, transaction
from adapter.models import InboundMessage


def stored_ids(sessions: sessionmaker[Session], source: str, limit: int = 500) -> list[int]:
    """The oldest ``limit`` rows of ``source`` still waiting to be processed (a read:
    no write lock; whoever processes them locks and re-reads each)."""
    with read_transaction(sessions) as session:
        return list(session.scalars(
            select(InboundMessage.id)
            .where(InboundMessage.source == source, InboundMessage.status == "stored")
            .order_by(InboundMessage.id)
            .limit(limit)))


def process_in_chunks(
    sessions: sessionmaker[Session],
    ids: list[int],
    process_chunk: Callable[[Session, list[int]], None],
    *,
    chunk_size: Callable[[], int],
    give_way: Callable[[], bool],
    budget_s: float,
) -> int:
    """``process_chunk`` on ``ids`` a chunk at a time (``chunk_size()`` ids each)
    in one transaction, until ``budget_s`` is spent or ``give_way()`` says a
    client waits for the write lock. Returns how many ids were handled."""
    done = 0
    began = time.perf_counter()
    with transaction(sessions) as session:
        while done < len(ids):
            chunk = ids[done : done + chunk_size()]
            process_chunk(session, chunk)
            done += len(chunk)
            if time.perf_counter() - began > budget_s or give_way():
                break
    return done


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
