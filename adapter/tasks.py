"""Celery tasks: short, parse the arguments, call the core (see adapter/celery_app.py
for the design). Each pool process builds its own :class:`~adapter.bootstrap.Container`
on first use (after the fork) and keeps one event loop for the channels' HTTP clients.

- ``adapter.dispatch.send_batch(ids)``: send notifications a claim loop claimed.
  Idempotent: a notification no longer ``claimed`` is skipped; a resend carries the
  same idempotency key.
- ``adapter.inbound.process_pending()``: map stored inbound messages (HL7, and FHIR
  versions stored by ``serve``) to events, one worker at a time (PostgreSQL
  advisory lock), oldest first.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import zlib

from celery import Celery
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)

# pg_try_advisory_lock key for "processing inbound messages"
INBOUND_LOCK = zlib.crc32(b"adapter.inbound.process_pending")

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


def send_batch(ids: list[int]) -> int:
    notification_ids = [int(i) for i in ids]
    _run(container().dispatcher.deliver(notification_ids))
    log.info("dispatched a batch", extra={"fields": {"notifications": len(notification_ids)}})
    return len(notification_ids)


def process_inbound() -> int:
    c = container()
    if c.settings.is_sqlite:  # one writer at a time anyway
        return c.intake.process_pending() + c.fhir.process_pending()
    with c.engine.connect() as conn:
        if not conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": INBOUND_LOCK}):
            return 0  # another worker is at it
        try:
            conn.commit()
            done = c.intake.process_pending() + c.fhir.process_pending()
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": INBOUND_LOCK})
            conn.commit()
    if done:
        log.info("processed inbound messages", extra={"fields": {"messages": done}})
    return done


def register(app: Celery) -> None:
    """Register the tasks on ``app``. A database outage retries the task (with
    backoff, without limit); the claim's lease is the last safety net."""
    retry = {"autoretry_for": (DBAPIError,), "retry_backoff": 1, "retry_backoff_max": 30, "max_retries": None}
    app.task(name="adapter.dispatch.send_batch", **retry)(send_batch)
    app.task(name="adapter.inbound.process_pending", **retry)(process_inbound)
