"""Running a real adapter inside the test process: HTTP and MLLP on free
127.0.0.1 ports, a real SQLite or PostgreSQL database, the sandbox channel."""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import time
from time import monotonic, sleep
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg

from adapter.bootstrap import Container, build
from adapter.clock import Clock
from adapter.db import transaction
from adapter.auth import create_token
from adapter.migrate import upgrade
from adapter.runtime import serve
from adapter.settings import Settings


PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextmanager
def fresh_pg_database(prefix: str = "adapter_test") -> Iterator[str]:
    """A new PostgreSQL database on 127.0.0.1, dropped afterwards; its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def adapter_env_vars(var_dir: Path, database_url: str | None = None) -> dict[str, str]:
    """What :func:`settings_for` sets, as the environment of a ``python -m adapter``
    process: its own var dir and keys, SQLite there unless ``database_url``."""
    return {
        "ADAPTER_ENVIRONMENT": "test",
        # The sending window is open at any hour: tests and benches run at night too.
        "ADAPTER_SENDING_WINDOW_START": "00:00",
        "ADAPTER_SENDING_WINDOW_END": "00:00",
        "ADAPTER_SEND_ON_HOLIDAYS": "true",
        "ADAPTER_DATABASE_URL": database_url or f"sqlite:///{var_dir / 'adapter.db'}",
        "ADAPTER_VAR_DIR": str(var_dir),
        "ADAPTER_MASTER_KEY_FILE": str(var_dir / "master.key"),
        "ADAPTER_AUDIT_SIGNING_KEY_FILE": str(var_dir / "audit.key"),
    }


def settings_for(tmp_path: Path, database_url: str | None = None, **overrides: object) -> Settings:
    return Settings(
        environment="test",
        database_url=database_url or f"sqlite:///{tmp_path / 'adapter.db'}",
        var_dir=tmp_path,
        master_key_file=tmp_path / "master.key",
        audit_signing_key_file=tmp_path / "audit.key",
        worker_poll_interval_s=0.05,
        **{
            # Tests run at any hour: the sending window is open unless a test says otherwise.
            "sending_window_start": time(0, 0),
            "sending_window_end": time(0, 0),
            "send_on_holidays": True,
            # Bundles are validated in the test's process; helper processes are
            # tested on their own (tests/fhir/test_validation_pool.py) and by serve.
            "fhir_validation_processes": 0,
            **overrides,
        },
    )


class SqliteSteps:
    """Counts the virtual machine steps SQLite takes for the statements an engine runs
    (to within ``every``; ``reset()`` starts again): the work of a query, whatever the
    machine's speed, so a test can show that it does not grow with a table."""

    def __init__(self, engine, every: int = 10) -> None:  # noqa: ANN001
        from sqlalchemy import event

        self.every = every
        self.count = 0
        event.listen(engine, "before_cursor_execute", self._watch)

    def _watch(self, conn, *_: object) -> None:  # noqa: ANN001
        conn.connection.dbapi_connection.set_progress_handler(self._tick, self.every)

    def _tick(self) -> int:
        self.count += self.every
        return 0  # go on

    def reset(self) -> None:
        self.count = 0


def migrated_container(settings: Settings, clock: Clock | None = None) -> Container:
    upgrade(settings.database_url)
    return build(settings, clock=clock)


@dataclass
class RunningAdapter:
    container: Container
    base_url: str
    mllp_port: int
    tokens: dict[str, str]

    def client(self, role: str = "admin") -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {self.tokens[role]}"}, timeout=30)

    def fhir_processed(self, timeout: float = 30.0) -> None:
        """Wait until every FHIR write answered so far has been processed (its
        events published, or the error store): FHIR writes are answered once
        stored, and processed after. Polls ``/api/messages``; fails on timeout."""
        deadline = monotonic() + timeout
        with self.client("officer") as officer:
            while True:
                waiting = officer.get("/api/messages", params={"source": "fhir", "status": "stored", "limit": 1})
                waiting.raise_for_status()
                if waiting.json()["total"] == 0:
                    return
                if monotonic() > deadline:
                    raise AssertionError(f"{waiting.json()['total']} FHIR versions still unprocessed after {timeout} s")
                sleep(0.02)


@contextmanager
def running_adapter(settings: Settings, clock: Clock | None = None, *, embedded_worker: bool = True) -> Iterator[RunningAdapter]:
    container = migrated_container(settings, clock)
    tokens = {}
    with transaction(container.sessions) as session:
        for role in ("ehr", "officer", "admin"):
            tokens[role] = create_token(session, role=role, name=f"test-{role}", now=container.clock.now())
    loop = asyncio.new_event_loop()
    shutdown = asyncio.Event()
    ports: list[int] = []
    ready = threading.Event()
    failure: list[BaseException] = []

    def on_ready(http_port: int, mllp_port: int) -> None:
        ports.extend([http_port, mllp_port])
        ready.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(
                serve(container, http_port=0, mllp_port=0, embedded_worker=embedded_worker, shutdown=shutdown,
                      on_ready=on_ready)
            )
        except BaseException as exc:  # surfaced to the test below
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=run, name="adapter", daemon=True)
    thread.start()
    if not ready.wait(30) or failure:
        raise RuntimeError(f"adapter did not start: {failure}")
    try:
        yield RunningAdapter(container, f"http://127.0.0.1:{ports[0]}", ports[1], tokens)
    finally:
        loop.call_soon_threadsafe(shutdown.set)
        thread.join(30)
        container.engine.dispose()


def config_refusal(load: Callable[[Path], object], path: Path, body: str) -> str:
    """What a config loader (``load_rules``, ``load_services``...) says of a file holding
    ``body``: its ConfigError's message, which must name the file."""
    from adapter.errors import ConfigError

    path.write_text(body)
    try:
        load(path)
    except ConfigError as exc:
        assert str(path) in str(exc), exc
        return str(exc)
    raise AssertionError(f"{path.name} was taken: {body!r}")


@contextmanager
def write_lock_held(sessions, statement: str = "SELECT 1", *, hold_s: float = 30.0) -> Iterator[threading.Thread]:
    """A write transaction in another thread (background work, say) holding the write lock,
    having run ``statement``, until the block ends (or ``hold_s`` passes)."""
    from sqlalchemy import text

    inside, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with transaction(sessions) as session:
            session.execute(text(statement))
            inside.set()
            leave.wait(hold_s)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert inside.wait(10), "the holding transaction did not start"
        yield thread
    finally:
        leave.set()
        thread.join()
