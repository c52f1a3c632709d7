"""Alembic environment of the latency store.

Two ways in:
- from :mod:`latency_db.migrate` (the application): the caller passes an open connection, already inside the
  transaction that holds the migration lock, as ``config.attributes["connection"]``; everything runs in it.
- from the ``alembic`` command line with ``-c latency_db/alembic.ini -x url=<database url>``: an engine is made
  from the URL and the migration lock taken as in ``latency_db.migrate`` (``--sql`` offline mode prints the SQL
  instead).
"""

from __future__ import annotations

from alembic import context

from latency_db.connection import make_engine, normalize_url
from latency_db.migrate import locked_migration_transaction
from latency_db.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise ValueError("database url: pass one with -x url=<database url>")
    return url


def run_offline() -> None:
    """Emit the migration SQL for the URL's dialect without connecting."""
    context.configure(url=normalize_url(_url()), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Run the migrations on the caller's connection, or on a new engine for the command-line URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(_url())
    try:
        with locked_migration_transaction(engine) as connection:
            context.configure(connection=connection, target_metadata=target_metadata)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
