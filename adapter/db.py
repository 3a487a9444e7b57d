"""Database engines and sessions: SQLite (WAL) by default, PostgreSQL in production.

One ``Base`` for every table in the project (core, compliance, fhir, hl7), so that
one Alembic history migrates them all.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BindParameter, Connection, DateTime, Dialect, Engine, LargeBinary, MetaData, Table, TypeDecorator, create_engine,
    event, text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import visitors
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from adapter.errors import DatabaseUnusable
from adapter.storage_full import is_storage_full, note_refused

_log = logging.getLogger(__name__)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend: ``timestamptz`` on PostgreSQL, naive
    UTC on SQLite (which has no zones). A naive value is refused, not guessed."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Execution option of a connection that only reads (see read_transaction).
READ_ONLY = "adapter_read_only"
# The largest integer a column holds (SQLite INTEGER, PostgreSQL BIGINT): ids, versions,
# offsets beyond it are refused where they come in, not overflowed in the driver.
LARGEST_INTEGER = 2**63 - 1
_HOLDS_LOCK = "adapter_holds_write_lock"


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


class FairLock:
    """A re-entrant lock granted in arrival order, except that a ``priority``
    acquire goes before every ordinary waiter. ``threading.RLock`` lets the
    thread that just released take it again at once, so a busy mapping thread
    could starve the thread that stores messages before their ACK; and in
    arrival order that thread would still wait behind every queued background
    transaction — so it asks with priority."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._depth = 0
        self._next_ticket = 0
        self._serving = 0
        self._owner_ticketed = False
        self._priority_waiting = 0

    def acquire(self, *, priority: bool = False) -> None:
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return
            if priority:
                self._priority_waiting += 1
                while self._owner is not None:
                    self._cond.wait()
                self._priority_waiting -= 1
            else:
                ticket = self._next_ticket
                self._next_ticket += 1
                while self._serving != ticket or self._owner is not None or self._priority_waiting:
                    self._cond.wait()
            self._owner, self._depth, self._owner_ticketed = me, 1, not priority

    def acquire_if_free(self) -> bool:
        """Take the lock as a ``priority`` acquire would, but only if no thread
        holds it now; never waits."""
        with self._cond:
            if self._owner is not None:
                return False
            self._owner, self._depth, self._owner_ticketed = threading.get_ident(), 1, False
            return True

    def release(self) -> None:
        with self._cond:
            if self._owner != threading.get_ident():
                raise RuntimeError("release of a lock held by another thread")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                if self._owner_ticketed:
                    self._serving += 1
                self._cond.notify_all()


_WRITE_LOCKS: dict[str, FairLock] = {}
_WRITE_LOCKS_GUARD = threading.Lock()
_ENGINE_WRITE_LOCKS: weakref.WeakKeyDictionary[Engine, FairLock] = weakref.WeakKeyDictionary()


def _write_lock(path: str) -> FairLock:
    """One lock per database file for this process: threads queue on it and wake
    the moment the previous write transaction ends, where SQLite's own busy
    handler would sleep in steps of up to 100 ms (ACK latency under load)."""
    with _WRITE_LOCKS_GUARD:
        return _WRITE_LOCKS.setdefault(str(Path(path).resolve()) if path != ":memory:" else path, FairLock())


def _begin_immediate_if_free(lock: FairLock, cursor: Any) -> bool:
    """:func:`_begin_immediate` only if neither this process's write lock nor
    SQLite's (another process's transaction) is held: False at once otherwise."""
    if not lock.acquire_if_free():
        return False
    began = False
    try:
        cursor.execute("PRAGMA busy_timeout=0")
        try:
            cursor.execute("BEGIN IMMEDIATE")
            began = True
        except sqlite3.OperationalError:  # database is locked: another process writes
            pass
        finally:
            cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    except BaseException:
        if began:  # the busy timeout could not be put back: no transaction is left open
            with suppress(Exception):
                cursor.execute("ROLLBACK")
            began = False
        raise
    finally:
        if not began:  # kept after a failure, every later write would wait for it for ever
            lock.release()
    return began


def _begin_immediate(lock: FairLock, execute: Callable[[str], Any], *, priority: bool = False) -> None:
    """Take this process's write lock, then SQLite's: IMMEDIATE takes it up front,
    so claims and upserts never deadlock on a lock upgrade between two processes."""
    lock.acquire(priority=priority)
    try:
        execute("BEGIN IMMEDIATE")
    except BaseException:
        lock.release()
        raise


BUSY_TIMEOUT_MS = 30_000  # SQLite: how long a statement waits for another process's write lock
CONNECT_TIMEOUT_S = 10  # a PostgreSQL host that drops packets: an answer, not a two-minute wait


def database_name(url: str) -> str:
    """The database at ``url`` as an operator names it, never with its password.

    >>> database_name("postgresql+psycopg://clinic:secret@db.example:6432/adapter")
    'PostgreSQL db.example:6432/adapter (user clinic)'
    >>> database_name("sqlite:////srv/adapter/adapter.db")
    'SQLite /srv/adapter/adapter.db'
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"SQLite {parsed.database}"
    host = parsed.host or parsed.query.get("host") or "localhost"
    user = f" (user {parsed.username})" if parsed.username else ""
    return f"PostgreSQL {host}:{parsed.port or 5432}/{parsed.database or parsed.username or ''}{user}"


def cannot_connect(url: str, exc: DBAPIError) -> DatabaseUnusable:
    """A failed connection to ``url`` as one line naming the database and the driver's
    reason (refused, no such database, authentication failed), without the password."""
    said = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc.orig).__name__
    reason = said.rsplit(" failed: ", 1)[-1].removeprefix("FATAL:").strip()  # psycopg: per host, then why
    password = make_url(url).password
    if password:
        reason = reason.replace(str(password), "***")
    return DatabaseUnusable(f"cannot use {database_name(url)}: {reason[:300]}")


def make_engine(url: str) -> Engine:
    """Create an engine; for SQLite, make the directory, and turn on WAL with
    synchronous=FULL so that a commit is durable before we acknowledge."""
    if is_sqlite(url):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        lock = _write_lock(path or ":memory:")
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, hide_parameters=True)
        _ENGINE_WRITE_LOCKS[engine] = lock

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - trivial
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn) -> None:  # pragma: no cover - trivial
            if conn.get_execution_options().get(READ_ONLY):
                # WAL: a reader sees the last commit and never waits for the writer.
                conn.exec_driver_sql("BEGIN")
                return
            _begin_immediate(lock, conn.exec_driver_sql)
            conn.info[_HOLDS_LOCK] = True

        @event.listens_for(engine, "commit")
        def _commit(conn) -> None:  # pragma: no cover - trivial
            # Fired just before SQLAlchemy's COMMIT: commit here, then let the next
            # writer in. Released before the COMMIT, the next writer's BEGIN IMMEDIATE
            # would meet SQLite's lock and sleep in its busy handler (1 ms, then 2,
            # then 5...) where the fsync takes a fraction of that. SQLAlchemy's own
            # commit then finds no transaction and does nothing.
            try:
                conn.connection.dbapi_connection.commit()
            finally:
                _release(conn)

        @event.listens_for(engine, "rollback")
        def _rollback(conn) -> None:  # pragma: no cover - trivial
            try:
                conn.connection.dbapi_connection.rollback()
            finally:
                _release(conn)

        def _release(conn) -> None:
            if not conn.info.pop(_HOLDS_LOCK, False):
                return  # a read-only transaction
            try:
                lock.release()
            except RuntimeError:  # ended from another thread (pool reset)
                pass

        return engine
    # connect_timeout: a PostgreSQL host that drops packets answers /health/ready with 503
    # in seconds, not after the system's TCP timeout. hide_parameters: an error's text
    # (logged, or raised to a caller) never carries the values bound to its statement.
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, hide_parameters=True,
                         connect_args={"connect_timeout": CONNECT_TIMEOUT_S})


@contextmanager
def raw_transaction(engine: Engine, *, priority: bool = False, wait: bool = True, connection: Any = None) -> Iterator[Any]:
    """A DB-API cursor in a transaction of its own, for the few hot statements
    where SQLAlchemy's per-statement work costs more than the statement. On
    SQLite it takes the same write lock and ``BEGIN IMMEDIATE`` as every other
    transaction here (``priority``: before every waiting background transaction;
    not ``wait``: only if no one holds it now, else the cursor is None and there
    is no transaction). Commits on success, rolls back on any error. On the
    ``connection`` given (one ``engine.raw_connection()`` its caller keeps), else
    on one from the engine's pool, which may wait for a connection to come back."""
    own = connection is None
    if own:
        connection = engine.raw_connection()
    lock = _ENGINE_WRITE_LOCKS.get(engine)
    if lock is None and engine.dialect.name == "sqlite":
        raise RuntimeError("a SQLite engine not made by make_engine has no write lock")
    try:
        cursor = connection.cursor()
        if lock is not None:
            if wait:
                _begin_immediate(lock, cursor.execute, priority=priority)
            elif not _begin_immediate_if_free(lock, cursor):
                yield None
                return
        try:
            yield cursor
        except BaseException:
            try:
                connection.rollback()
            finally:
                if lock is not None:
                    lock.release()
            raise
        try:
            connection.commit()
        finally:
            if lock is not None:
                lock.release()  # after the COMMIT, as for the engine's transactions
    finally:
        if own:
            connection.close()


class StatementConnection:
    """A PostgreSQL DB-API connection whose every statement is a transaction of its
    own (autocommit), for a hot statement that does a whole unit of work
    (data-modifying CTEs): all or nothing, and durable when it returns, in one round
    trip where ``BEGIN`` and ``COMMIT`` would cost one each. Kept between
    statements that follow within ``idle_s``: the pool pings a connection it hands
    out, a round trip more. One idle longer goes back to the pool, so a quiet feed's
    next statement gets a pinged one; one whose statement failed is closed."""

    def __init__(self, engine: Engine, *, idle_s: float = 1.0) -> None:
        if engine.dialect.name != "postgresql":
            raise RuntimeError("StatementConnection is for PostgreSQL: SQLite transactions take the write lock")
        self.engine = engine
        self.idle_s = idle_s
        self._held: Any = None
        self._used = 0.0
        self._lock = threading.Lock()

    def execute(self, sql: str, parameters: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Run ``sql``, committed when it returns; its rows. On a kept connection the
        server has closed meanwhile (a restart, a failover: what the pool's ping would
        have caught) it is sent once more, on a new one. Had the first reached its
        commit, the second finds its rows there (an ``ON CONFLICT`` statement takes
        them for retransmissions, as it would the sender's own resend)."""
        with self._lock:  # one caller at a time has it; another checks out its own
            connection, self._held = self._held, None
            kept = time.monotonic() - self._used <= self.idle_s
        if connection is not None and not kept:
            _give_back(connection)
            connection = None
        if connection is None:
            connection, kept = self._connect(), False
        try:
            rows = _run(connection, sql, parameters)
        except self.engine.dialect.dbapi.OperationalError:
            connection.invalidate()
            if not kept:
                raise
            connection = self._connect()
            try:
                rows = _run(connection, sql, parameters)
            except BaseException:
                connection.invalidate()
                raise
        except BaseException:
            connection.invalidate()
            raise
        with self._lock:
            connection, self._held = self._held, connection
            self._used = time.monotonic()
        if connection is not None:
            _give_back(connection)
        return rows

    def _connect(self) -> Any:
        connection = self.engine.raw_connection()
        connection.dbapi_connection.autocommit = True
        return connection

    def close(self) -> None:
        with self._lock:
            connection, self._held = self._held, None
        if connection is not None:
            _give_back(connection)


def _run(connection: Any, sql: str, parameters: Sequence[Any]) -> list[tuple[Any, ...]]:
    cursor = connection.dbapi_connection.cursor()
    cursor.execute(sql, parameters)
    return cursor.fetchall()


def _give_back(connection: Any) -> None:
    """Back to the pool as the pool hands connections out: not in autocommit."""
    try:
        connection.dbapi_connection.autocommit = False
    except Exception:  # noqa: BLE001 - a broken connection: the pool's ping throws it away
        connection.invalidate()
    connection.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A unit of work: commit on success, roll back on any error. A write refused for
    want of space is noted (:mod:`adapter.storage_full`: one log line an episode)."""
    with factory() as session:
        try:
            with session.begin():
                yield session
        except Exception as exc:
            note_refused(factory.kw["bind"], exc)
            raise


def all_or_each(
    session: Session, items: Sequence[Any], work: Callable[[Any], Any], *,
    hold: Callable[[], AbstractContextManager[Any]] = nullcontext, stop: Callable[[], bool] = lambda: False,
    what: str = "items",
) -> list[Any]:
    """``work(item)`` for ``items`` in order, each all or nothing, a failure returned in
    its place; after each item, ``stop()`` may end the run early (the outcomes returned
    are then those of the first items). The items first go together in one savepoint,
    inside ``hold()`` (a savepoint each, with the ORM's flush before it, costs more than
    many items do); should one of them raise, that savepoint is undone and they go again
    a savepoint each, so a failure stays its own."""
    if len(items) > 1:
        done: list[Any] = []
        try:
            with session.begin_nested(), hold():
                for item in items:
                    done.append(work(item))
                    if stop():
                        break
        except Exception as exc:  # noqa: BLE001 - one of them is at fault: each on its own, next, finds which
            if is_storage_full(exc):  # none of them is: the whole transaction waits for space
                raise
            _log.warning("%d %s failed together in one savepoint; doing them one by one", len(items), what)
        else:
            return done
    out: list[Any] = []
    for item in items:
        try:
            # What the ORM holds is flushed when the savepoint ends: a failure there is
            # this item's outcome too, in its place (not after its result).
            with session.begin_nested():
                result = work(item)
        except Exception as exc:  # noqa: BLE001 - the caller records it against its item
            if is_storage_full(exc):  # not the item's fault: undone with the transaction, done again later
                raise
            result = exc
        out.append(result)
        if stop():
            break
    return out


def hold_until_commit(connection: Session | Connection, name: str) -> None:
    """On PostgreSQL, wait until no other transaction holds the lock ``name``, and hold it
    until this one ends (``pg_advisory_xact_lock``): for work that must take turns across
    processes. Nothing on SQLite, which has one writer anyway."""
    bind = connection.get_bind() if isinstance(connection, Session) else connection
    if bind.dialect.name != "postgresql":
        return
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


@contextmanager
def overwriting_deleted(session: Session, *, deleted: Callable[[], bool] = lambda: True) -> Iterator[None]:
    """What ``session`` deletes inside the block leaves no copy behind in the database
    files (GDPR art. 5(1)(e), 17): on SQLite the freed space is overwritten with zeros
    (``PRAGMA secure_delete``), and once the transaction commits the write-ahead log,
    which still holds the pages as they were, is checkpointed and emptied (when
    ``deleted()`` says anything was: the checkpoint waits for the write lock and for
    readers). PostgreSQL keeps a deleted row's bytes until VACUUM reuses its space
    (autovacuum)."""
    connection = session.connection()
    if connection.dialect.name != "sqlite":
        yield
        return
    connection.exec_driver_sql("PRAGMA secure_delete = ON")
    try:
        yield
    finally:
        connection.exec_driver_sql("PRAGMA secure_delete = OFF")
    engine = connection.engine
    if deleted():
        event.listen(session, "after_commit", lambda _session: _empty_wal(engine), once=True)


def _empty_wal(engine: Engine) -> None:
    """Checkpoint the whole log into the database and truncate it (it waits, up to the
    busy timeout, for the readers of older snapshots). Best effort: logged when busy."""
    lock = _ENGINE_WRITE_LOCKS.get(engine)
    connection = engine.raw_connection()
    try:
        if lock is not None:
            lock.acquire()
        try:
            busy = connection.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        finally:
            if lock is not None:
                lock.release()
        if busy:
            _log.warning("the write-ahead log could not be emptied after an erasure; the next checkpoint will")
    finally:
        connection.close()


@contextmanager
def read_transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A unit of work that only reads, always rolled back. On SQLite it takes no
    write lock (WAL readers see the last commit and never wait for the writer),
    so an authentication or a FHIR read does not queue behind writes."""
    with factory() as session:
        session.connection(execution_options={READ_ONLY: True})
        try:
            yield session
        finally:
            session.rollback()


class _InsertPlan:
    """How :func:`insert_rows` writes one table's rows with one set of columns on one
    dialect: the statement's text per row count, and each column's bind processor
    (the one SQLAlchemy would apply)."""

    def __init__(self, table: Table, columns: tuple[str, ...], returning: tuple[str, ...], dialect: Dialect,
                 on_conflict_do_nothing: bool) -> None:
        missing = [c.key for c in table.columns
                   if c.key not in columns and c.default is not None and not c.primary_key]
        if missing:
            raise ValueError(f"insert_rows into {table.name}: give {', '.join(missing)} (Python-side defaults are not applied)")
        quote = dialect.identifier_preparer.quote
        # The processor SQLAlchemy's compiler uses (a private method; SQLAlchemy is pinned
        # in requirements.txt). Bytes go to sqlite3 and psycopg as they are: no wrapping in the driver's Binary.
        self.processors = [(name, None if isinstance(table.c[name].type, LargeBinary)
                            else table.c[name].type._cached_bind_processor(dialect)) for name in columns]
        marker = placeholder(dialect)
        self._row = "(" + ", ".join([marker] * len(columns)) + ")"
        self._head = f"INSERT INTO {quote(table.name)} ({', '.join(quote(table.c[name].name) for name in columns)}) VALUES "
        self._tail = (" ON CONFLICT DO NOTHING" if on_conflict_do_nothing else "") + (
            f" RETURNING {', '.join(quote(table.c[name].name) for name in returning)}" if returning else "")
        self.rows_per_statement = max(1, min(500, (dialect.insertmanyvalues_max_parameters or 999) // max(1, len(columns))))
        self._sql: dict[int, str] = {}

    def sql(self, count: int) -> str:
        text = self._sql.get(count)
        if text is None:
            text = self._sql[count] = self._head + ", ".join([self._row] * count) + self._tail
        return text

    def parameters(self, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        """Every row's values in column order, converted as SQLAlchemy would; a value
        seen before in the same column (the transaction's ``now``) is converted once."""
        out: list[Any] = []
        append = out.append
        columns = [(name, process, {}) for name, process in self.processors]
        for row in rows:
            for name, process, seen in columns:
                value = row[name]
                if process is not None and value is not None:
                    if type(value) in _MEMOISABLE:
                        converted = seen.get(value, _UNSEEN)
                        if converted is _UNSEEN:
                            converted = seen[value] = process(value)
                        value = converted
                    else:
                        value = process(value)
                append(value)
        return out


def placeholder(dialect: Dialect) -> str:
    """The DB-API parameter marker of ``dialect`` (``?`` for sqlite3, ``%s`` for psycopg)."""
    return "?" if dialect.paramstyle == "qmark" else "%s"


_UNSEEN = object()
_MEMOISABLE = frozenset({datetime, str, int, bool})
_INSERT_PLANS: dict[tuple[Any, ...], _InsertPlan] = {}


def insert_rows(
    session: Session, table: Table, rows: Sequence[Mapping[str, Any]], *,
    returning: Sequence[str] = (), on_conflict_do_nothing: bool = False,
) -> list[tuple[Any, ...]]:
    """``table.insert()`` of ``rows`` in the session's transaction, as multi-row
    ``INSERT ... VALUES`` statements on its DB-API cursor: for the pipeline's hot
    inserts, where SQLAlchemy's work per statement and per value costs more than
    SQLite's. Every row has the same keys; a column with a Python-side default must
    be given (refused otherwise: nothing fills it in here). Returns the
    ``returning`` columns of the inserted rows, in no particular order."""
    if not rows:
        return []
    cursor, dialect = _cursor_of(session)
    return insert_rows_with(cursor, dialect, table, rows, returning=returning, on_conflict_do_nothing=on_conflict_do_nothing)


def insert_rows_with(
    cursor: Any, dialect: Dialect, table: Table, rows: Sequence[Mapping[str, Any]], *,
    returning: Sequence[str] = (), on_conflict_do_nothing: bool = False,
) -> list[tuple[Any, ...]]:
    """:func:`insert_rows` on a DB-API ``cursor`` already in a transaction
    (:func:`raw_transaction`'s, on the ACK path)."""
    if not rows:
        return []
    columns = tuple(rows[0])
    key = (table, columns, tuple(returning), on_conflict_do_nothing, dialect.name, dialect.paramstyle)
    plan = _INSERT_PLANS.get(key)
    if plan is None:
        plan = _INSERT_PLANS[key] = _InsertPlan(table, columns, tuple(returning), dialect, on_conflict_do_nothing)
    if any(len(row) != len(columns) for row in rows):
        raise ValueError(f"insert_rows into {table.name}: every row needs the same columns")
    out: list[tuple[Any, ...]] = []
    for first in range(0, len(rows), plan.rows_per_statement):
        chunk = rows[first : first + plan.rows_per_statement]
        cursor.execute(plan.sql(len(chunk)), plan.parameters(chunk))
        if returning:
            out.extend(tuple(row) for row in cursor.fetchall())
    return out


class _StatementPlan:
    """How :func:`execute_prebuilt` runs one statement on one dialect for one set of
    parameter names (and lengths of its expanding ``IN`` lists): the SQL text as
    SQLAlchemy would send it, where each DB-API parameter comes from with the bind
    processor SQLAlchemy would apply, and each returned column's result processor."""

    def __init__(self, statement: Any, dialect: Dialect, parameters: Mapping[str, Any]) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=sorted(parameters))
        if compiled.insert_prefetch or compiled.update_prefetch:
            filled = ", ".join(c.key for c in (*compiled.insert_prefetch, *compiled.update_prefetch))
            raise ValueError(f"execute_prebuilt: give {filled} (Python-side defaults are not applied)")
        expanded = compiled.construct_expanded_state(parameters)
        self.sql = expanded.statement
        self.positional = expanded.positiontup is not None
        self.names = list(expanded.positiontup if self.positional else expanded.parameters)
        source: dict[str, tuple[str, int | None]] = {name: (name, None) for name in parameters}
        for name, names in expanded.parameter_expansion.items():
            source.update((each, (name, position)) for position, each in enumerate(names))
        # (parameter, position in its list or None, processor, value when no parameter gives
        # it: a literal of the statement); bytes go to sqlite3 and psycopg as they are.
        self.binds: list[tuple[str | None, int | None, Callable[[Any], Any] | None, Any]] = []
        for name in self.names:
            key, position = source.get(name, (None, None))
            bound = compiled.binds[name if position is None else key]
            # The processors SQLAlchemy applies (private methods, as in _InsertPlan).
            process = None if isinstance(bound.type, LargeBinary) else bound.type._cached_bind_processor(dialect)
            if key is None:
                constant = expanded.parameters[name]
                self.binds.append((None, None, None, process(constant) if process else constant))
            else:
                self.binds.append((key, position, process, None))
        self.results = [column.type._cached_result_processor(dialect, None) for column in statement.exported_columns]
        self.returns_rows = bool(self.results)
        self._converts = any(self.results)

    def parameters(self, given: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        values = []
        append = values.append
        for key, position, process, constant in self.binds:
            if key is None:
                append(constant)
                continue
            value = given[key] if position is None else given[key][position]
            append(process(value) if process is not None else value)
        return values if self.positional else dict(zip(self.names, values, strict=True))

    def rows(self, fetched: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
        if not self._converts:
            return [tuple(row) for row in fetched]
        return [tuple(value if process is None else process(value) for process, value in zip(self.results, row, strict=True))
                for row in fetched]


_STATEMENT_PLANS: dict[tuple[Any, ...], _StatementPlan] = {}
_EXPANDING: dict[Any, tuple[str, ...]] = {}  # statement -> the names of its expanding (IN) parameters
_CURSOR = "adapter_prebuilt_cursor"  # session.info: (its innermost transaction, a cursor, the dialect)


def execute_prebuilt(session: Session, statement: Any, parameters: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """``session.execute(statement, parameters)`` on the DB-API cursor of the session's
    transaction (its write lock and savepoints included), for the mapping path's hot
    look-ups and updates, where SQLAlchemy's work per execution costs ten times the
    statement's on SQLite. ``statement``: a Core statement built once (at import), since
    each distinct object is compiled and kept. Values go in and come back converted as
    SQLAlchemy converts them (aware UTC datetimes, JSON, booleans); returns the rows as
    plain tuples in the statement's column order (none for a statement without
    ``RETURNING``). A column with a Python-side default or ``onupdate`` must be given."""
    cursor, dialect = _cursor_of(session)
    key = (statement, dialect.name, dialect.paramstyle, *parameters)
    expanding = _EXPANDING.get(statement)
    if expanding is None:
        expanding = _EXPANDING[statement] = tuple(sorted({
            element.key for element in visitors.iterate(statement)
            if isinstance(element, BindParameter) and element.expanding}))
    if expanding:
        key += tuple(len(parameters[name]) for name in expanding)
    plan = _STATEMENT_PLANS.get(key)
    if plan is None:
        plan = _STATEMENT_PLANS[key] = _StatementPlan(statement, dialect, parameters)
    cursor.execute(plan.sql, plan.parameters(parameters))
    return plan.rows(cursor.fetchall()) if plan.returns_rows else []


def _cursor_of(session: Session) -> tuple[Any, Dialect]:
    """A DB-API cursor on the connection of the session's transaction, made again only
    when the innermost transaction changes (asking the session for its connection costs
    more than a short statement; and asking it is what makes a savepoint begun with
    ``begin_nested`` send its ``SAVEPOINT``, which SQLAlchemy defers until then)."""
    current = session.get_nested_transaction() or session.get_transaction()
    held = session.info.get(_CURSOR)
    if held is not None and current is not None and held[0] is current:
        return held[1], held[2]
    connection = session.connection()  # begins the transaction or the savepoint
    cursor = connection.connection.cursor()
    session.info[_CURSOR] = (session.get_nested_transaction() or session.get_transaction(), cursor, connection.dialect)
    return cursor, connection.dialect
