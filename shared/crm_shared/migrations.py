"""Alembic, run per service: each service owns one PostgreSQL schema and its own version table."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import pool, text
from sqlalchemy.ext.asyncio import create_async_engine

from crm_shared.db import check_schema_name
from crm_shared.settings import CommonSettings


def alembic_config(script_location: Path, *, database_url: str, schema: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.attributes["database_url"] = database_url
    config.attributes["schema"] = check_schema_name(schema)
    return config


def upgrade(script_location: Path, *, database_url: str, schema: str, revision: str = "head") -> None:
    """Bring a service's schema up to `revision`. Synchronous: call it outside a running event loop."""
    command.upgrade(alembic_config(script_location, database_url=database_url, schema=schema), revision)


def run_env(context: Any, target_metadata: Any, default_schema: str) -> None:
    """The body of every service's `migrations/env.py` (online mode only)."""
    config = context.config
    database_url = config.attributes.get("database_url") or CommonSettings().database_url
    schema = check_schema_name(config.attributes.get("schema") or default_schema)

    def run(connection: Any) -> None:
        context.configure(connection=connection, target_metadata=target_metadata, version_table_schema=schema,
                          include_schemas=False)
        with context.begin_transaction():
            context.run_migrations()

    async def main() -> None:
        engine = create_async_engine(database_url, poolclass=pool.NullPool,
                                     connect_args={"server_settings": {"search_path": f"{schema},public"}})
        async with engine.connect() as connection:
            await connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            await connection.commit()
            await connection.run_sync(run)
        await engine.dispose()

    asyncio.run(main())
