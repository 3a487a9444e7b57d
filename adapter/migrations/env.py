"""Alembic environment: one history for every table on ``adapter.db.Base``."""

from alembic import context
import adapter.models  # noqa: F401 - register tables
import compliance.models  # noqa: F401
import fhir.models  # noqa: F401
import adapter.reply_models  # noqa: F401
import adapter.contact_models  # noqa: F401
from adapter.db import Base, hold_until_commit, make_engine

config = context.config
target_metadata = Base.metadata
# Several processes migrate at start-up (each systemd unit's ExecStartPre, serve itself):
# on PostgreSQL they take turns, and the later ones find the schema current.


def _run(connection) -> None:  # noqa: ANN001
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        # Held until this transaction ends; the version is read after it, so the
        # second process sees what the first committed.
        hold_until_commit(connection, "adapter.migrate")
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        _run(connectable)
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


run_migrations_online()
