"""Each service's migrations build exactly the schema its code declares, and can be undone.

Per service, on the real PostgreSQL: a fresh schema is migrated to head, down to base and to head
again; then alembic compares it with the service's SQLAlchemy metadata (tables, columns and their
types, nullability, server defaults, indexes with their predicates, keys). A migration written by
hand that drifts from the tables the queries are written against fails here, not in production.
"""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from crm_shared.migrations import alembic_config
from crm_shared.testing import REPO_ROOT, StackEndpoints, unique_name
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

pytestmark = pytest.mark.integration

SERVICES = {"pos-gateway": "pos_gateway", "member-profile": "member_profile", "segmenter": "segmenter",
            "replenishment": "replenishment", "notifier": "notifier"}


def schema_differences(database_url: str, schema: str, metadata: Any) -> list[Any]:
    async def compare() -> list[Any]:
        engine = create_async_engine(database_url, connect_args={"server_settings": {"search_path": schema}})
        try:
            async with engine.connect() as conn:
                def run(sync: Any) -> list[Any]:
                    context = MigrationContext.configure(sync, opts={"compare_type": True,
                                                                     "compare_server_default": True})
                    return list(compare_metadata(context, metadata))
                return await conn.run_sync(run)
        finally:
            await engine.dispose()

    return asyncio.run(compare())


def drop_schema(database_url: str, schema: str) -> None:
    async def drop() -> None:
        engine = create_async_engine(database_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        finally:
            await engine.dispose()

    asyncio.run(drop())


@pytest.mark.parametrize("folder", sorted(SERVICES))
def test_migrations_build_the_declared_schema_and_undo_cleanly(crm_stack: StackEndpoints, folder: str) -> None:
    module = SERVICES[folder]
    schema = unique_name(f"mig_{module}")
    config = alembic_config(REPO_ROOT / "services" / folder / "migrations", database_url=crm_stack.database_url,
                            schema=schema)
    try:
        command.upgrade(config, "head")
        command.downgrade(config, "base")
        command.upgrade(config, "head")
        metadata = importlib.import_module(f"{module}.store").metadata
        assert metadata.tables, f"{module}.store declares no table"
        differences = schema_differences(crm_stack.database_url, schema, metadata)
        assert differences == [], f"{folder}: migrations and {module}.store differ:\n" + "\n".join(
            map(str, differences))
    finally:
        drop_schema(crm_stack.database_url, schema)


def test_replenishment_0006_hands_the_sales_applied_before_it_to_the_sell_through_group(
        crm_stack: StackEndpoints) -> None:
    """Sell-through became a consumer group of its own in revision 0006; the sales applied before it are
    in `daily_sales` already, so their ids are copied to `applied_sell_through` (the new group, reading
    the topic from its start, skips them), and only those: not the ids of other topics."""
    import uuid

    schema = unique_name("mig_replenishment_0006")
    config = alembic_config(REPO_ROOT / "services" / "replenishment" / "migrations",
                            database_url=crm_stack.database_url, schema=schema)
    sale, receipt = uuid.uuid4(), uuid.uuid4()

    async def execute(statement: str, **params: Any) -> list[Any]:
        engine = create_async_engine(crm_stack.database_url)
        try:
            async with engine.begin() as conn:
                result = await conn.execute(text(statement.replace("SCHEMA", f'"{schema}"')), params)
                return list(result) if result.returns_rows else []
        finally:
            await engine.dispose()

    try:
        command.upgrade(config, "0005")
        asyncio.run(execute("INSERT INTO SCHEMA.applied_events (event_id, topic) VALUES (:a, 'abc.pos.sales.v1'), "
                            "(:b, 'abc.inventory.receipts.v1')", a=sale, b=receipt))
        command.upgrade(config, "0006")
        copied = asyncio.run(execute("SELECT event_id, topic FROM SCHEMA.applied_sell_through"))
        assert [(row.event_id, row.topic) for row in copied] == [(sale, "abc.pos.sales.v1")]
    finally:
        drop_schema(crm_stack.database_url, schema)
