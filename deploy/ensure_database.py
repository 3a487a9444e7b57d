"""Create the PostgreSQL database named in a SQLAlchemy URL if it does not exist
(``make run-cluster``). Usage: ``python deploy/ensure_database.py URL``."""

from __future__ import annotations

import sys

import psycopg
from sqlalchemy.engine import make_url


def main(url: str) -> None:
    target = make_url(url)
    admin = target.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target.database,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{target.database}"')
            print(f"created database {target.database}")


if __name__ == "__main__":
    main(sys.argv[1])
