"""Database migrations (Alembic), run by ``python -m adapter migrate`` and at start-up."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url)
    return config


def upgrade(url: str) -> None:
    """Bring the database at ``url`` to the newest schema."""
    command.upgrade(alembic_config(url), "head")


def new_revision(url: str, message: str) -> None:
    """Developers: autogenerate a revision from the models (``make migration``)."""
    command.revision(alembic_config(url), message=message, autogenerate=True)
