"""Points taken from lots on real PostgreSQL, in one statement: each lot loses what was taken from it,
a lot named twice loses the sum, and lots not named keep theirs."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from crm_shared.testing import StackEndpoints, fresh_tables
from member_profile import store
from sqlalchemy import insert, select

pytestmark = pytest.mark.integration

EARNED = datetime(2011, 3, 1, 10, 0, tzinfo=UTC)


async def scenario(database_url: str) -> dict[str, int]:
    engine = await fresh_tables(database_url, "member_points_taken", store.metadata)
    try:
        lots = store.points_lots
        async with engine.begin() as conn:
            await conn.execute(insert(lots), [
                {"member_id": "m1", "points": 100, "remaining": 100, "earned_at": EARNED,
                 "expires_at": EARNED + timedelta(days=365), "cause": cause} for cause in ("a", "b", "c")])
            ids = dict((await conn.execute(select(lots.c.cause, lots.c.id))).all())
        async with engine.begin() as conn:
            await store.take_points(conn, [(ids["a"], 30), (ids["b"], 100), (ids["a"], 20)])
            await store.take_points(conn, [])
        async with engine.connect() as conn:
            return dict((await conn.execute(select(lots.c.cause, lots.c.remaining))).all())
    finally:
        await engine.dispose()


def test_each_lot_loses_what_was_taken_a_lot_named_twice_the_sum(crm_stack: StackEndpoints) -> None:
    assert asyncio.run(scenario(crm_stack.database_url)) == {"a": 50, "b": 0, "c": 100}
