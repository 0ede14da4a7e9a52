"""Alembic, driven from code: every service upgrades its own schema at start-up.

The environment and the revision template live here (`shared/storage/alembic/`); a
service's `migrations/` folder holds only its `versions/`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from alembic import command, context
from alembic.config import Config
from sqlalchemy import Connection, Engine, MetaData, TypeDecorator, create_engine, text

from shared.storage.db import is_postgres

_MIGRATION_LOCK = 727_375_001
ENVIRONMENT = Path(__file__).parent / "alembic"


def alembic_config(migrations: Path, metadata: MetaData | None = None) -> Config:
    """The library's environment with the versions in `migrations/versions`; `metadata`
    (a service's `Base.metadata`) is needed to autogenerate, not to upgrade."""
    config = Config()
    config.set_main_option("script_location", str(ENVIRONMENT))
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", str(migrations / "versions"))
    config.attributes["metadata"] = metadata
    return config


def upgrade(engine: Engine, migrations: Path) -> None:
    """Upgrade to head. Processes sharing one PostgreSQL database take turns."""
    config = alembic_config(migrations)
    with engine.begin() as connection:
        if is_postgres(engine):
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def run_migrations() -> None:
    """The body of env.py (online mode; a URL in sqlalchemy.url when no connection is given)."""
    metadata = context.config.attributes.get("metadata")
    connection = context.config.attributes.get("connection")
    if connection is None:
        url = context.config.get_main_option("sqlalchemy.url") or "sqlite://"
        with create_engine(url).connect() as fresh:
            _configure_and_run(fresh, metadata)
            fresh.commit()
        return
    _configure_and_run(connection, metadata)


def _configure_and_run(connection: Connection, metadata: MetaData | None) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=_render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


def _render_item(kind: str, obj: Any, _context: Any) -> str | Literal[False]:
    """Render a TypeDecorator column (e.g. UtcDateTime) as its plain SQL type, so that
    migrations never import application code."""
    if kind == "type" and isinstance(obj, TypeDecorator):
        return f"sa.{obj.impl!r}"
    return False
