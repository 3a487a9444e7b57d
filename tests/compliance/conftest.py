"""Storage fixtures: every storage test runs on SQLite (a temporary file) and on the local
PostgreSQL server, in a database created for this test session and dropped after it."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

import compliance.models  # noqa: F401  (registers the tables on Base)
from adapter.db import Base, make_engine, make_sessionmaker
from compliance.crypto import LocalMasterKey, Vault
from compliance.models import AuditEntry, AuditNode, AuditTreeHead, ConsentRecord, DataKey, DataKeyDestructions

PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
COMPLIANCE_TABLES = [DataKey.__table__, DataKeyDestructions.__table__, AuditEntry.__table__, AuditNode.__table__,
                     AuditTreeHead.__table__, ConsentRecord.__table__]
T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    name = f"adapter_test_compliance_{secrets.token_hex(6)}"
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # pragma: no cover - depends on the machine
        admin.dispose()
        # The storage tests must run on PostgreSQL: a missing server fails loudly.
        raise RuntimeError(f"PostgreSQL is not running on 127.0.0.1:5432 ({exc}); see shared/README.md") from exc
    yield f"{PG_SERVER}/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path) -> Iterator[Engine]:
    if request.param == "sqlite":
        eng = make_engine(f"sqlite:///{tmp_path / 'adapter.db'}")
    else:
        eng = make_engine(request.getfixturevalue("pg_url"))
    Base.metadata.drop_all(eng, tables=COMPLIANCE_TABLES)
    Base.metadata.create_all(eng, tables=COMPLIANCE_TABLES)
    yield eng
    Base.metadata.drop_all(eng, tables=COMPLIANCE_TABLES)
    eng.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


@pytest.fixture
def master() -> LocalMasterKey:
    return LocalMasterKey.from_base64(LocalMasterKey.generate())


@pytest.fixture
def vault(sessions: sessionmaker[Session], master: LocalMasterKey) -> Vault:
    return Vault.open(sessions, master)
