"""A database the adapter cannot use as it is (never migrated, unreachable, a schema
older or newer than the code, a malformed URL) stops every command with one line
and exit status 2, never a traceback or a password; and a running adapter whose
PostgreSQL goes away says it is not ready and acknowledges nothing it has not stored."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import make_url

from adapter.db import make_engine
from adapter.migrate import MIGRATIONS, upgrade
from adapter.settings import Settings, describe
from hl7.client import send_messages
from tests.core.test_cli import cli
from tests.core.test_compliance_surfaces import cli as cli_in_process
from tests.core.test_end_to_end import notifications, siu, wait_for
from tests.harness import PG_ADMIN, running_adapter, settings_for

COMMANDS_THAT_DO_NOT_MIGRATE = [
    ["hl7", "errors"], ["hl7", "replay", "1"], ["hl7", "acks"], ["hl7", "acks", "resend", "1"],
    ["writebacks"], ["writebacks", "resend", "1"], ["audit", "verify"], ["audit", "export", "--since", "2026-01-01"],
    ["audit", "sign"], ["keys", "rotate", "--grace", "0"], ["gdpr", "export", "P1"], ["gdpr", "erase", "P1", "--yes"],
    ["outbox"], ["fhir", "poll", "--server", "http://127.0.0.1:9/fhir"],
    ["fhir", "subscribe", "--server", "http://127.0.0.1:9/fhir"],
]
PASSWORD = "s3cret-pw"
UNREACHABLE = f"postgresql+psycopg://clinic:{PASSWORD}@127.0.0.1:1/adapter"


def database_error(output: str) -> str:
    """The one line the command said, checking it said nothing else."""
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("database error: "), output
    return lines[0]


def stamp(url: str, revision: str) -> None:
    """Set the schema revision the database claims, as another version of the code would."""
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    engine.dispose()


@pytest.mark.parametrize("command", COMMANDS_THAT_DO_NOT_MIGRATE, ids=" ".join)
def test_a_command_on_a_never_migrated_path_says_so_in_one_line_and_creates_nothing(tmp_path, command):
    database = tmp_path / "mistyped" / "adapter.db"
    code, output = cli_in_process(settings_for(tmp_path, f"sqlite:///{database}"), *command)
    assert code == 2
    assert database_error(output) == (f"database error: SQLite {database} has no adapter schema; run `python -m "
                                      "adapter migrate` (or check ADAPTER_DATABASE_URL)")
    assert not database.parent.exists()


def test_an_empty_sqlite_file_has_no_adapter_schema_either(tmp_path):
    database = tmp_path / "adapter.db"
    database.touch()
    code, output = cli_in_process(settings_for(tmp_path, f"sqlite:///{database}"), "hl7", "errors")
    assert code == 2 and "has no adapter schema" in database_error(output)


def test_pending_migrations_stop_commands_that_do_not_migrate_naming_both_revisions(tmp_path, database_url):
    upgrade(database_url)
    script = ScriptDirectory(str(MIGRATIONS))
    head = script.get_current_head()
    previous = script.get_revision(head).down_revision
    stamp(database_url, previous)
    code, output = cli_in_process(settings_for(tmp_path, database_url), "audit", "verify")
    assert code == 2
    assert f"has schema revision {previous}, older than this code's {head}; run `python -m adapter migrate`" \
        in database_error(output)


def test_a_schema_newer_than_the_code_stops_even_migrate_and_is_left_as_it_is(tmp_path, database_url):
    upgrade(database_url)
    stamp(database_url, "9a9a9a9a9a9a")
    settings = settings_for(tmp_path, database_url)
    for command in (["migrate"], ["hl7", "errors"]):
        code, output = cli_in_process(settings, *command)
        assert code == 2, (command, output)
        assert "has schema revision 9a9a9a9a9a9a, which this code does not know" in database_error(output)
    engine = make_engine(database_url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "9a9a9a9a9a9a"
    engine.dispose()


def test_unreachable_postgresql_a_never_migrated_path_or_a_malformed_url_stop_serve_worker_and_commands(tmp_path):
    """In processes of their own, as operators run them: exit 2, no traceback, whatever
    logging serve and worker set up first, and never the password."""
    absent = tmp_path / "absent" / "adapter.db"
    runs = [
        (["serve", "--http-port", "0", "--mllp-port", "0"], UNREACHABLE),
        (["worker", "--pool", "solo"], UNREACHABLE),
        (["gdpr", "export", "P1"], UNREACHABLE),
        (["hl7", "errors"], f"sqlite:///{absent}"),
        (["outbox"], f"postgres://clinic:{PASSWORD}@db/adapter"),
    ]
    broker = {"ADAPTER_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//", "ADAPTER_CELERY_QUEUE": "adapter-refused"}
    with ThreadPoolExecutor(len(runs)) as pool:
        results = list(pool.map(lambda run: cli(tmp_path, *run[0], timeout=30, env={
            "ADAPTER_DATABASE_URL": run[1], **(broker if run[0][0] == "worker" else {})}), runs))
    for (command, url), result in zip(runs, results, strict=True):
        said = [line for line in result.stderr.splitlines() if not line.startswith("{")]  # serve's JSON logs
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr + result.stdout, (command, result.stderr)
        assert PASSWORD not in result.stderr + result.stdout
        if url == UNREACHABLE:
            assert said == ["database error: cannot use PostgreSQL 127.0.0.1:1/adapter (user clinic): Connection refused"], \
                (command, result.stderr)
    assert results[3].stderr.strip() == (f"database error: SQLite {absent} has no adapter schema; run `python -m "
                                         "adapter migrate` (or check ADAPTER_DATABASE_URL)"), results[3].stderr
    assert not absent.parent.exists()
    assert " ".join(results[-1].stderr.split()).startswith("configuration error: ADAPTER_DATABASE_URL")


@pytest.mark.parametrize(("url", "problem"), [
    ("postgres://clinic:s3cret@db/adapter", "postgres:// is not understood: write postgresql+psycopg://"),
    ("postgresql+psycopg2://clinic:s3cret@db/adapter", "the postgresql+psycopg2 driver is not one this adapter ships"),
    ("sqlite:/var/adapter.db", "not a database URL: use sqlite:///relative/path.db"),
    ("sqlite://var/adapter.db", "SQLite needs a file path, with three slashes before a relative one"),
    ("sqlite://", "SQLite needs a file path"),
    ("adapter.db", "not a database URL"),
    ("postgresql+psycopg://clinic:s3cret@db:port/adapter", "not a database URL"),
])
def test_a_malformed_database_url_is_a_configuration_error_naming_the_variable_not_its_value(url, problem):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as caught:
        Settings(database_url=url)
    [line] = describe(caught.value)
    assert line.startswith("ADAPTER_DATABASE_URL (database_url in config/adapter.yaml): " + problem), line
    assert "s3cret" not in line


def set_connections(database_url: str, allowed: bool) -> None:
    """Let no one connect to the database and end every session on it (PostgreSQL gone,
    as far as this adapter can tell), or let them in again."""
    name = make_url(database_url).database
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))


@pytest.mark.timeout(120)
def test_postgresql_gone_while_serving_means_not_ready_and_no_aa_until_it_is_back(tmp_path, pg_url):
    start = datetime.now(UTC) + timedelta(days=3)
    with running_adapter(settings_for(tmp_path, pg_url)) as adapter:
        ready = f"{adapter.base_url}/health/ready"
        assert httpx.get(ready).status_code == 200
        set_connections(pg_url, allowed=False)
        try:
            down = httpx.get(ready, timeout=30)
            assert down.status_code == 503 and down.json()["checks"]["database"].startswith("unavailable"), down.text
            [while_down] = asyncio.run(send_messages([siu("S12", "DOWN1", start)], "127.0.0.1", adapter.mllp_port,
                                                     retries=0))
            assert while_down.code is not None and while_down.code.value == "AE", while_down
            assert b"\rERR|" in while_down.ack and b"could not be stored" in while_down.ack
        finally:
            set_connections(pg_url, allowed=True)
        wait_for(lambda: httpx.get(ready).status_code == 200, 30)
        [again] = asyncio.run(send_messages([siu("S12", "DOWN1", start)], "127.0.0.1", adapter.mllp_port))
        assert again.code.value == "AA"
        officer = adapter.client("officer")
        wait_for(lambda: [n for n in notifications(officer) if n["kind"] == "booking_confirmation"], 30)
        stored = officer.get("/api/messages", params={"control_id": "DOWN1"}).json()["items"]
        assert len(stored) == 1 and stored[0]["status"] == "processed"


def test_a_failed_statement_s_error_never_carries_the_values_bound_to_it(database_url):
    """Errors are logged and reach callers; the values of a statement are patients' data."""
    from sqlalchemy import text

    from adapter.db import make_engine

    engine = make_engine(database_url)
    try:
        with pytest.raises(Exception) as raised, engine.connect() as connection:
            connection.execute(text("SELECT no_such_column FROM no_such_table WHERE x = :x"), {"x": "Nicolò D'Alò"})
        assert "no_such_table" in str(raised.value) and "Nicolò" not in str(raised.value)
    finally:
        engine.dispose()
