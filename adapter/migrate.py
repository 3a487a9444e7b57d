"""Database migrations (Alembic), run by ``python -m adapter migrate`` and at start-up,
and the check every other command makes first: that the database holds the schema
this code expects (:func:`require_current_schema`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from adapter.db import CONNECT_TIMEOUT_S, cannot_connect, database_name
from adapter.errors import DatabaseUnusable

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
MIGRATE = "run `python -m adapter migrate`"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url)
    return config


def upgrade(url: str) -> None:
    """Bring the database at ``url`` to the newest schema, creating it (and, for SQLite,
    its file) if need be. Refused with :class:`DatabaseUnusable` when the database
    cannot be reached or is at a revision this code does not know: a newer adapter
    migrated it, and this one would read and write it wrongly."""
    if _exists(url):
        _refuse_unknown(url, _current_revisions(url))
    command.upgrade(alembic_config(url), "head")


def require_current_schema(url: str) -> None:
    """Raise :class:`DatabaseUnusable` unless the database at ``url`` is reachable and
    at this code's newest revision. Creates nothing: a mistyped SQLite path is
    reported, not left behind as an empty file."""
    if not _exists(url):
        raise _no_schema(url)
    current = _current_revisions(url)
    if not current:
        raise _no_schema(url)
    _refuse_unknown(url, current)
    if current != _heads():
        raise DatabaseUnusable(
            f"{database_name(url)} has schema revision {', '.join(sorted(current))}, older than this code's "
            f"{', '.join(sorted(_heads()))}; {MIGRATE}")


def new_revision(url: str, message: str) -> None:
    """Developers: autogenerate a revision from the models (``make migration``)."""
    command.revision(alembic_config(url), message=message, autogenerate=True)


def _exists(url: str) -> bool:
    """False for a SQLite file that is not there; a server's database is asked."""
    parsed = make_url(url)
    return parsed.get_backend_name() != "sqlite" or Path(parsed.database or "").exists()


def _no_schema(url: str) -> DatabaseUnusable:
    return DatabaseUnusable(f"{database_name(url)} has no adapter schema; {MIGRATE} (or check ADAPTER_DATABASE_URL)")


def _refuse_unknown(url: str, current: frozenset[str]) -> None:
    unknown = current - _known()
    if unknown:
        raise DatabaseUnusable(
            f"{database_name(url)} has schema revision {', '.join(sorted(unknown))}, which this code does not know "
            f"(its newest is {', '.join(sorted(_heads()))}): a newer version of the adapter migrated it, or it is "
            "not an adapter database; run that version, or restore a backup taken before its migration")


def _current_revisions(url: str) -> frozenset[str]:
    """The revisions stamped in the database (empty: never migrated)."""
    with _connection(url) as connection:
        return frozenset(MigrationContext.configure(connection).get_current_heads())


@contextmanager
def _connection(url: str) -> Iterator[Connection]:
    """A connection of its own, not :func:`adapter.db.make_engine`'s: it makes no SQLite
    directory, sets no pragma and takes no write lock; connection failures become one
    :class:`DatabaseUnusable` line."""
    connect_args = {} if make_url(url).get_backend_name() == "sqlite" else {"connect_timeout": CONNECT_TIMEOUT_S}
    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect() as connection:
            yield connection
    except DBAPIError as exc:
        raise cannot_connect(url, exc) from exc
    finally:
        engine.dispose()


@lru_cache(maxsize=1)
def _script() -> ScriptDirectory:
    return ScriptDirectory(str(MIGRATIONS))


def _heads() -> frozenset[str]:
    return frozenset(_script().get_heads())


def _known() -> frozenset[str]:
    return frozenset(revision.revision for revision in _script().walk_revisions())
