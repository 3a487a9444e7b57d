"""When the database cannot grow: its disk is full (SQLite: SQLITE_FULL, "database or
disk is full"; PostgreSQL: SQLSTATE 53100 ``disk_full``).

Such a refusal is no message's fault and ends when an operator frees space, so:
nothing is acknowledged (HL7 AE/CE "could not be stored", FHIR 503 with
Retry-After), nothing stored is settled as an error because of it (the work stays
where it was and is done again once space returns), and it is logged once per
episode, not once per message: :class:`SpaceWatch` says when writes began to be
refused and when they are taken again, for ``/health/ready`` and ``/metrics``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from adapter.errors import AdapterError

log = logging.getLogger(__name__)

SQLITE_FULL = sqlite3.SQLITE_FULL
DISK_FULL_SQLSTATE = "53100"  # PostgreSQL, class 53: insufficient resources
# A SQLite database that refused a write for want of space is taken as writable again
# once it has this much room to grow (an HL7 report with its document is ~10 MB).
ROOM_TO_RESUME_BYTES = 16 * 1024 * 1024
# What a client is asked to wait before sending again (HTTP Retry-After): freeing space
# takes a person.
RETRY_AFTER_S = 60
NOT_STORED = "the adapter's database is full (no space left to store it)"


class StorageFull(AdapterError):
    """A write was refused for want of space: nothing was stored; the caller's sender
    is to send again later."""


def is_storage_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what it wraps: SQLAlchemy's ``orig``, a cause) is the
    database refusing a write for want of space."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, sqlite3.Error) and (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == SQLITE_FULL:
            return True
        if getattr(exc, "sqlstate", None) == DISK_FULL_SQLSTATE:  # psycopg
            return True
        exc = getattr(exc, "orig", None) or exc.__cause__ or exc.__context__
    return False


class SpaceWatch:
    """One database's episodes of refused writes for want of space: one log line when
    the first write is refused, one when a write that needed space succeeds again (or,
    on SQLite, :meth:`problem` finds room again), and the state in between."""

    def __init__(self, engine: Engine) -> None:
        self._engine = weakref.ref(engine)
        self._lock = threading.Lock()
        self.since: datetime | None = None
        self._began = 0.0
        self.refused_in_episode = 0
        self.refused_total = 0
        self.episodes = 0

    @property
    def full(self) -> bool:
        return self.since is not None

    def refused(self, exc: BaseException) -> bool:
        """Note ``exc`` if it is a write refused for want of space (True), else False."""
        if not is_storage_full(exc):
            return False
        with self._lock:
            self.refused_total += 1
            self.refused_in_episode += 1
            if self.since is not None:
                return True
            self.since, self._began, self.episodes = datetime.now(UTC), time.monotonic(), self.episodes + 1
        log.error("database full: %s refused a write (%s); nothing more is stored, and nothing is acknowledged,"
                  " until space is freed. HL7 messages are answered AE/CE, FHIR writes 503; stored work waits",
                  self._name(), _reason(exc))
        return True

    def writable(self) -> None:
        """A write that needed space has committed: the episode, if any, is over."""
        if self.since is None:  # the ACK path calls this after each commit: one look, no lock
            return
        with self._lock:
            if self.since is None:
                return
            took, refused = time.monotonic() - self._began, self.refused_in_episode
            self.since, self.refused_in_episode = None, 0
        log.warning("database writable again after %.0f s; %d writes were refused meanwhile "
                    "(senders were told to resend)", took, refused)

    def problem(self) -> str | None:
        """For ``/health/ready``: None, or why writes are refused. On SQLite, room found
        again (space freed while nothing tried to write) ends the episode here."""
        since = self.since
        if since is None:
            return None
        engine = self._engine()
        if engine is not None and engine.dialect.name == "sqlite":
            room = room_to_grow(engine)
            if room is not None and room >= ROOM_TO_RESUME_BYTES:
                self.writable()
                return None
        return (f"full: writes refused since {since.isoformat(timespec='seconds')} for want of space"
                f" ({self.refused_in_episode} so far); free space on the database's disk")

    def _name(self) -> str:
        engine = self._engine()
        if engine is None:
            return "the database"
        from adapter.db import database_name  # adapter.db imports this module

        return database_name(engine.url.render_as_string(hide_password=True))


def _reason(exc: BaseException) -> str:
    """The driver's words for a refusal, first line only (never a statement's values:
    engines hide them)."""
    orig = getattr(exc, "orig", None) or exc
    said = str(orig).strip().splitlines()
    return said[0][:200] if said else type(orig).__name__


def room_to_grow(engine: Engine) -> int | None:
    """Bytes a SQLite database can still grow by: its free pages, plus what its page
    limit and the file system both still allow; None when it cannot be read."""
    from adapter.db import READ_ONLY  # adapter.db imports this module

    try:
        with engine.connect().execution_options(**{READ_ONLY: True}) as connection:
            page_size, pages, most, free = (connection.exec_driver_sql(f"PRAGMA {name}").scalar_one() for name in (
                "page_size", "page_count", "max_page_count", "freelist_count"))
            connection.rollback()
        path = engine.url.database
        disk = _free_bytes(Path(path).resolve().parent) if path and path != ":memory:" else None
    except Exception:  # noqa: BLE001 - the readiness check says the database is unavailable instead
        return None
    grow = (most - pages) * page_size
    return free * page_size + (grow if disk is None else min(grow, disk))


def _free_bytes(directory: Path) -> int:
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize


_WATCHES: weakref.WeakKeyDictionary[Engine, SpaceWatch] = weakref.WeakKeyDictionary()
_WATCHES_GUARD = threading.Lock()


def space_watch(engine: Engine) -> SpaceWatch:
    """The one :class:`SpaceWatch` of ``engine``."""
    watch = _WATCHES.get(engine)
    if watch is None:
        with _WATCHES_GUARD:
            watch = _WATCHES.setdefault(engine, SpaceWatch(engine))
    return watch


def note_refused(engine: Any, exc: BaseException) -> bool:
    """:meth:`SpaceWatch.refused` on ``engine``'s watch (``engine``: an Engine or a
    Connection); True when ``exc`` was a write refused for want of space."""
    if not is_storage_full(exc):
        return False
    return space_watch(getattr(engine, "engine", engine)).refused(exc)
