"""`crm_shared.db.insert_from_recordset` on the real PostgreSQL: the values come back exactly, only
new rows are returned, rows go in in the order given (a serial column numbers them so), and however
many rows a call carries, the connection keeps ONE prepared statement for it (SQLAlchemy's
executemany of an INSERT ... RETURNING keeps one per row count)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from crm_shared.db import insert_from_recordset, recordset_rows
from crm_shared.testing import StackEndpoints, fresh_tables
from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID, insert

pytestmark = pytest.mark.integration

SCHEMA = "recordset_check"
metadata = MetaData()
offers = Table(
    "offers", metadata,
    Column("offer_id", UUID(as_uuid=True), primary_key=True),
    Column("trigger", String(32), nullable=False),  # a keyword as a column name
    Column("text", Text, nullable=False),
    Column("products", ARRAY(Text), nullable=False),
    Column("cycle", Date, nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Column("unit_cost", Numeric),
    Column("forecast", Float, nullable=False),
    Column("features", JSONB(none_as_null=True)),
    Column("learned", Boolean, nullable=False, server_default="false"),
)
arrivals = Table(
    "arrivals", metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=True),
    Column("name", Text, nullable=False),
)
ARRIVAL_INSERT = insert_from_recordset(arrivals, ("name",), tail="")
COLUMNS = ("offer_id", "trigger", "text", "products", "cycle", "issued_at", "unit_cost", "forecast", "features")
INSERT = insert_from_recordset(offers, COLUMNS, tail="ON CONFLICT DO NOTHING RETURNING offer_id")


def row(i: int) -> dict[str, Any]:
    return {"offer_id": uuid.UUID(int=i), "trigger": "cross_sell", "text": f"Offer {i}: 'quoted', \"double\", ünïcode",
            "products": [f"sku-{i}", "sku,with,commas"], "cycle": date(2011, 12, 9),
            "issued_at": datetime(2011, 12, 9, 12, 50, 0, 123456, tzinfo=UTC),
            "unit_cost": Decimal("0.1") * i if i % 3 else None, "forecast": 1 / 3 + i,
            "features": {"lift": 2.5, "tier": "gold"} if i % 2 else None}


ARRIVALS = [f"{(i * 7919) % 5000:04d}" for i in range(5000)]  # an order no sort or hash of them gives


async def scenario(database_url: str) -> tuple[list[set[uuid.UUID]], list[dict[str, Any]], int, int, int, list[str]]:
    engine = await fresh_tables(database_url, SCHEMA, metadata)
    try:
        returned: list[set[uuid.UUID]] = []
        async with engine.begin() as conn:
            for batch in ([row(1)], [row(i) for i in range(1, 8)], [row(i) for i in range(5, 305)]):
                result = await conn.execute(text(INSERT), {"rows": recordset_rows(batch, COLUMNS)})
                returned.append({r.offer_id for r in result})
            ours = await conn.scalar(text("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE "
                                          "'INSERT INTO offers%jsonb_to_recordset%'"))
            stored = [dict(r._mapping) for r in await conn.execute(select(offers).order_by(offers.c.offer_id))]
            sql_nulls = int(await conn.scalar(text("SELECT count(*) FROM offers WHERE features IS NULL")) or 0)
            # The way it replaces: an executemany with RETURNING, for 3 row counts.
            for batch in ([row(1001)], [row(i) for i in range(1002, 1009)], [row(i) for i in range(1009, 1039)]):
                await conn.execute(insert(offers).on_conflict_do_nothing().returning(offers.c.offer_id), batch)
            executemany = await conn.scalar(text("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE "
                                                 "'INSERT INTO offers%VALUES%RETURNING%'"))
            await conn.execute(text(ARRIVAL_INSERT), {"rows": recordset_rows([{"name": n} for n in ARRIVALS], ("name",))})
            numbered = list(await conn.scalars(select(arrivals.c.name).order_by(arrivals.c.seq)))
        return returned, stored, sql_nulls, int(ours or 0), int(executemany or 0), numbered
    finally:
        await engine.dispose()


def test_rows_round_trip_in_order_new_ones_are_returned_and_one_statement_serves_every_row_count(
        crm_stack: StackEndpoints) -> None:
    returned, stored, sql_nulls, ours, executemany, numbered = asyncio.run(scenario(crm_stack.database_url))
    assert numbered == ARRIVALS, "rows were not numbered in the order given"
    assert returned == [{uuid.UUID(int=1)}, {uuid.UUID(int=i) for i in range(2, 8)},
                        {uuid.UUID(int=i) for i in range(8, 305)}]  # a row already there is not returned
    assert [{k: r[k] for k in COLUMNS} for r in stored] == [row(i) for i in range(1, 305)]
    assert all(r["learned"] is False for r in stored)  # a column left out takes its default
    assert sql_nulls == 152  # None is SQL NULL, not the JSON value null (which reads back as None too)
    assert ours == 1
    assert executemany == 3, "the executemany this replaces should keep one statement per row count"
