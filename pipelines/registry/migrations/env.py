"""Alembic environment of the registry, run by `pipelines.registry.migrations`.

The runner hands over a connection that is already inside a locked
transaction (``config.attributes["connection"]``); alembic then sees an
external transaction and leaves commit to the runner.  Without one — the
``alembic`` command line, or ``--sql`` to print the DDL for a DBA — it builds
its own engine from ``sqlalchemy.url`` and takes no cross-process lock, so
prefer `pipelines.registry.migrations.upgrade`.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from pipelines.registry.schema import Base, create_registry_engine

config = context.config


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite alters most things by copying the table; autogenerate writes batch ops for it.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def _run() -> None:
    if context.is_offline_mode():
        context.configure(
            url=config.get_main_option("sqlalchemy.url"), target_metadata=Base.metadata, literal_binds=True
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    given: Connection | None = config.attributes.get("connection")
    if given is not None:
        _configure(given)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url, or run migrations through pipelines.registry.migrations.upgrade(url)")
    engine = create_registry_engine(url)
    try:
        with engine.connect() as connection:
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
    finally:
        engine.dispose()


_run()
