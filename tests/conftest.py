"""Shared fixtures: real databases (SQLite file, PostgreSQL on 127.0.0.1)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import fresh_pg_database


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards. The server
    must be running (shared/README.md says how to start it): no skip."""
    with fresh_pg_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """Each storage test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'adapter.db'}"
    else:
        yield request.getfixturevalue("pg_url")
