"""Alembic environment: one history for every table on ``adapter.db.Base``."""

from alembic import context

import adapter.models  # noqa: F401 - register tables
import compliance.models  # noqa: F401
import fhir.models  # noqa: F401
import adapter.reply_models  # noqa: F401
import adapter.contact_models  # noqa: F401
from adapter.db import Base, make_engine

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        context.configure(connection=connectable, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
