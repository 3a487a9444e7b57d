"""Celery tasks: short, parse the arguments, call the core (see adapter/celery_app.py
for the design). Each pool process builds its own :class:`~adapter.bootstrap.Container`
on first use (after the fork) and keeps one event loop for the channels' HTTP clients.

- ``adapter.dispatch.send_batch(ids, leased_until)``: send notifications a claim loop
  claimed until ``leased_until``. Idempotent: a notification no longer ``claimed``, or
  claimed again since, is skipped; a resend carries the same idempotency key.
- ``adapter.inbound.process_pending()``: map stored inbound messages (HL7, and FHIR
  versions stored by ``serve``) to events, one worker at a time (PostgreSQL
  advisory lock), oldest first.
- ``adapter.way_back.send_pending()``: the way back (:class:`~adapter.webhooks.WayBack`):
  provider callbacks left unprocessed, due write-backs and application ACKs to
  hospitals, for up to ``WAY_BACK_BUDGET_S``. One worker at a time (PostgreSQL
  advisory lock), so a hospital that is slow to answer holds one pool process, never
  all of them; each row is claimed all the same, so nothing goes out twice.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import zlib
from collections.abc import Callable
from datetime import datetime

from celery import Celery
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)

# pg_try_advisory_lock keys for "processing inbound messages" and "the way back"
INBOUND_LOCK = zlib.crc32(b"adapter.inbound.process_pending")
WAY_BACK_LOCK = zlib.crc32(b"adapter.way_back.send_pending")
# A way-back task goes on while there is work, at most this long (the claim loop
# publishes another when more is due): then its pool process is free for sending.
WAY_BACK_BUDGET_S = 10.0

_local = threading.local()
_build_lock = threading.Lock()
_container = None


def container():
    """This process's container, built on first use (never before the fork)."""
    global _container
    with _build_lock:
        if _container is None:
            from adapter.bootstrap import build
            from adapter.settings import get_settings

            _container = build(get_settings())
        return _container


def _run(coro):  # noqa: ANN001, ANN202
    loop = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = _local.loop = asyncio.new_event_loop()
    return loop.run_until_complete(coro)


def send_batch(ids: list[int], leased_until: str | None = None) -> int:
    if leased_until is None:
        # Published before claims carried their lease's end: left to run out and be claimed again.
        log.warning("a batch without its lease's end was not sent", extra={"fields": {"notifications": len(ids)}})
        return 0
    notification_ids = [int(i) for i in ids]
    _run(container().dispatcher.deliver(notification_ids, datetime.fromisoformat(leased_until)))
    log.info("dispatched a batch", extra={"fields": {"notifications": len(notification_ids)}})
    return len(notification_ids)


def _one_worker_at_a_time(lock: int, work: Callable[[], int]) -> int:
    """``work()`` unless another worker holds ``lock`` (then 0); SQLite: one writer anyway."""
    c = container()
    if c.settings.is_sqlite:
        return work()
    with c.engine.connect() as conn:
        if not conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": lock}):
            return 0  # another worker is at it
        try:
            conn.commit()
            return work()
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock})
            conn.commit()


def process_inbound() -> int:
    c = container()
    done = _one_worker_at_a_time(INBOUND_LOCK, lambda: c.intake.process_pending() + c.fhir.process_pending())
    if done:
        log.info("processed inbound messages", extra={"fields": {"messages": done}})
    return done


async def _way_back_rounds() -> int:
    from adapter.webhooks import WayBack

    way_back, done, began = WayBack(container()), 0, time.monotonic()
    try:
        while time.monotonic() - began < WAY_BACK_BUDGET_S:
            busy = await way_back.run_once()
            done += busy
            if not busy:
                break
    finally:
        await way_back.aclose()
    return done


def send_way_back() -> int:
    done = _one_worker_at_a_time(WAY_BACK_LOCK, lambda: _run(_way_back_rounds()))
    if done:
        log.info("sent to hospitals", extra={"fields": {"writebacks_and_acks": done}})
    return done


def register(app: Celery) -> None:
    """Register the tasks on ``app``. A database outage retries the task (with
    backoff, without limit); the claim's lease is the last safety net."""
    retry = {"autoretry_for": (DBAPIError,), "retry_backoff": 1, "retry_backoff_max": 30, "max_retries": None}
    app.task(name="adapter.dispatch.send_batch", **retry)(send_batch)
    app.task(name="adapter.inbound.process_pending", **retry)(process_inbound)
    app.task(name="adapter.way_back.send_pending", **retry)(send_way_back)
