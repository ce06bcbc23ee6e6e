"""PostgreSQL analyses a freshly filled table within seconds, so the planner stops reading it whole.

A new schema's tables have no planner statistics until autovacuum first analyses them. With the default
`autovacuum_naptime` (1 min) that was the first minute of every replay and benchmark: the notifier's
per-member offer lookups went by sequential scans of a growing table (`bench/offer_latency.py`: p99
270-410 ms at 1,000 sales/s, 95-120 ms once the tables were analysed). The embedded stack and
docker-compose.yml run with `crm_shared.embedded.POSTGRES_TUNING`; this checks the server the tests
run on does what that is for."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from crm_shared.testing import StackEndpoints, fresh_tables, unique_name
from sqlalchemy import Column, DateTime, Index, MetaData, String, Table, text

pytestmark = pytest.mark.integration

ANALYSED_WITHIN_S = 30.0  # naptime 5 s; the default (60 s) fails this
MEMBERS, OFFERS_EACH = 400, 50

metadata = MetaData()
offers = Table(
    "offers", metadata,
    Column("offer_id", String(40), primary_key=True),
    Column("member_id", String(40), nullable=False),
    Column("valid_to", DateTime(timezone=True), nullable=False),
    Index("ix_offers_member_valid", "member_id", "valid_to"),
)


def plan_nodes(plan: dict) -> list[str]:
    return [plan["Node Type"], *(node for child in plan.get("Plans", []) for node in plan_nodes(child))]


async def scenario(database_url: str) -> tuple[float | None, list[str]]:
    schema = unique_name("analysed")
    engine = await fresh_tables(database_url, schema, metadata)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(
                "INSERT INTO offers SELECT 'o' || i, 'm' || (i % :members), now() + (i % 7) * interval '1 day' "
                "FROM generate_series(1, :rows) AS i"), {"members": MEMBERS, "rows": MEMBERS * OFFERS_EACH})
        started, analysed_after = time.monotonic(), None
        while time.monotonic() - started < ANALYSED_WITHIN_S:
            async with engine.connect() as conn:
                if await conn.scalar(text("SELECT last_autoanalyze IS NOT NULL FROM pg_stat_user_tables "
                                          "WHERE schemaname = :schema AND relname = 'offers'"), {"schema": schema}):
                    analysed_after = time.monotonic() - started
                    break
            await asyncio.sleep(0.5)
        async with engine.connect() as conn:
            plan = await conn.scalar(text(
                "EXPLAIN (FORMAT JSON) SELECT * FROM offers WHERE member_id = ANY(CAST(:ids AS text[])) "
                "AND valid_to >= now()"), {"ids": [f"m{i}" for i in range(0, MEMBERS, MEMBERS // 30)]})
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            await conn.commit()
        document = plan if isinstance(plan, list) else json.loads(plan)
        return analysed_after, plan_nodes(document[0]["Plan"])
    finally:
        await engine.dispose()


def test_a_freshly_filled_table_is_analysed_within_seconds_and_looked_up_by_its_index(
        crm_stack: StackEndpoints) -> None:
    analysed_after, nodes = asyncio.run(scenario(crm_stack.database_url))
    assert analysed_after is not None, (
        f"autovacuum did not analyse a fresh {MEMBERS * OFFERS_EACH:,}-row table within {ANALYSED_WITHIN_S:.0f} s: "
        "is PostgreSQL running with crm_shared.embedded.POSTGRES_TUNING?")
    assert "Seq Scan" not in nodes, f"30 members' offers read by {nodes}, not by the member index"
