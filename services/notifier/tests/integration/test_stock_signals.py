"""The notifier's stock signals on the real PostgreSQL: what `stock_signals_for` loads decides the hold
at every time of the span as the whole history would, a repeat is a no-op, and pruning drops only
signals that a later one before the horizon supersedes (and only past the wall-clock grace)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from crm_shared.migrations import upgrade
from crm_shared.testing import REPO_ROOT, StackEndpoints, unique_name
from notifier import domain, store
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

pytestmark = pytest.mark.integration

T0 = datetime(2011, 3, 1, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)
SIGNALS = [("s1", "sauce", T0, "low"), ("s1", "sauce", T0 + 2 * DAY, "received"), ("s1", "sauce", T0 + 5 * DAY, "low"),
           ("s1", "beer", T0 + DAY, "low"), ("s2", "sauce", T0 + 4 * DAY, "low")]


@pytest.fixture
def schema(crm_stack: StackEndpoints) -> Iterator[str]:
    name = unique_name("notifier_signals")
    upgrade(REPO_ROOT / "services" / "notifier" / "migrations", database_url=crm_stack.database_url, schema=name)
    yield name

    async def drop() -> None:
        engine = create_async_engine(crm_stack.database_url)
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
        await engine.dispose()

    asyncio.run(drop())


def run(crm_stack: StackEndpoints, schema: str, work: Any) -> Any:
    async def main() -> Any:
        engine: AsyncEngine = create_async_engine(crm_stack.database_url,
                                                  connect_args={"server_settings": {"search_path": schema}})
        try:
            async with engine.begin() as conn:
                return await work(conn)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def rows(signals: list[tuple[str, str, datetime, str]]) -> list[dict[str, Any]]:
    return [{"store_id": s, "sku": k, "at": at, "kind": kind, "days_of_cover": 0.5 if kind == "low" else None}
            for s, k, at, kind in signals]


def held(loaded: dict[tuple[str, str], list[dict[str, Any]]], key: tuple[str, str], at: datetime) -> bool:
    return domain.low_at([domain.StockSignal(r["at"], r["kind"]) for r in loaded.get(key, [])], at)


def test_the_signals_loaded_for_a_span_decide_every_time_in_it(crm_stack: StackEndpoints, schema: str) -> None:
    async def work(conn: Any) -> Any:
        await store.record_stock_signals(conn, rows(SIGNALS))
        await store.record_stock_signals(conn, rows(SIGNALS[:2]))  # redelivered: no-op
        return await store.stock_signals_for(conn, {("s1", "sauce"): (T0 + DAY, T0 + 6 * DAY),
                                                    ("s1", "beer"): (T0, T0), ("s3", "sauce"): (T0, T0 + DAY)})

    loaded = run(crm_stack, schema, work)
    assert [r["at"] for r in loaded[("s1", "sauce")]] == [T0, T0 + 2 * DAY, T0 + 5 * DAY]  # the latest up to `since`
    assert ("s1", "beer") not in loaded  # reported after the span: nothing to hold it then
    assert ("s3", "sauce") not in loaded
    whole = {("s1", "sauce"): rows(SIGNALS[:3])}
    for hours in range(24, 24 * 6 + 1, 6):
        at = T0 + timedelta(hours=hours)
        assert held(loaded, ("s1", "sauce"), at) == held(whole, ("s1", "sauce"), at), at
    assert held(loaded, ("s1", "sauce"), T0 + DAY) and not held(loaded, ("s1", "sauce"), T0 + 3 * DAY)
    assert held(loaded, ("s1", "sauce"), T0 + 6 * DAY)


def test_pruning_keeps_what_decides_times_after_the_horizon(crm_stack: StackEndpoints, schema: str) -> None:
    async def record(conn: Any) -> None:
        await store.record_stock_signals(conn, rows(SIGNALS))

    def prune(grace: timedelta) -> Any:
        async def work(conn: Any) -> Any:
            await store.forget_stock_signals(conn, T0 + 3 * DAY, grace)
            return sorted((r.store_id, r.sku, r.at, r.kind) for r in await conn.execute(text(
                "SELECT store_id, sku, at, kind FROM stock_signals")))
        return work

    run(crm_stack, schema, record)
    assert run(crm_stack, schema, prune(timedelta(hours=1))) == sorted(SIGNALS)  # recorded just now: in the grace
    # sauce's report at T0 is superseded by the receipt at T0+2d, before the horizon: gone; the rest decide
    assert run(crm_stack, schema, prune(timedelta(0))) == sorted(SIGNALS[1:])
