"""Redemptions written on real PostgreSQL, a batch in one statement: a change is written only if the
offer is still as it was loaded (another replica may have redeemed it meanwhile: the first to commit
wins), an undone redemption clears every column, and the revenue keeps its cents."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from crm_shared.testing import StackEndpoints, fresh_tables
from notifier import store
from sqlalchemy import insert, select

pytestmark = pytest.mark.integration

AT = datetime(2011, 3, 1, 10, 0, tzinfo=UTC)
REDEMPTION = ("redeemed_at", "redeemed_revenue", "redeemed_by", "redeemed_by_code")


def offer(offer_id: str, redeemed_by: str | None = None) -> dict[str, Any]:
    return {"offer_id": offer_id, "campaign_id": "c1", "member_id": "m1", "trigger": "cross_sell", "channel": "push",
            "products": ["butter"], "store_id": "s1", "text": "", "issued_at": AT, "valid_to": AT + timedelta(days=7),
            "withheld": False, "redeemed_at": AT if redeemed_by else None,
            "redeemed_revenue": Decimal("1.00") if redeemed_by else None, "redeemed_by": redeemed_by,
            "redeemed_by_code": False}


def redeemed(offer_id: str, held_by: str | None, sale_id: str | None, revenue: str | None = None) -> dict[str, Any]:
    return {"offer_id": offer_id, "held_by": held_by, "redeemed_at": AT + timedelta(days=1) if sale_id else None,
            "redeemed_revenue": Decimal(revenue) if revenue else None, "redeemed_by": sale_id,
            "redeemed_by_code": bool(sale_id) and offer_id == "by-code"}


async def scenario(database_url: str) -> tuple[set[str], dict[str, tuple[Any, ...]]]:
    engine = await fresh_tables(database_url, "notifier_redemptions", store.metadata)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(store.offers), [offer("open"), offer("by-code"), offer("raced", "sale-9"),
                                                      offer("undone", "sale-1"), offer("untouched")])
        async with engine.begin() as conn:
            saved = await store.save_redemptions(conn, [
                redeemed("open", None, "sale-2", "3.10"),
                redeemed("by-code", None, "sale-3", "0.99"),
                redeemed("raced", None, "sale-4", "5.00"),  # loaded unredeemed; another replica's sale-9 won
                redeemed("undone", "sale-1", None),  # the redeeming sale's return
            ])
            assert await store.save_redemptions(conn, []) == set()
        async with engine.connect() as conn:
            rows = await conn.execute(select(store.offers.c.offer_id, *(store.offers.c[c] for c in REDEMPTION)))
            return saved, {r.offer_id: tuple(r)[1:] for r in rows}
    finally:
        await engine.dispose()


def test_a_redemption_is_written_only_over_the_offer_as_loaded(crm_stack: StackEndpoints) -> None:
    saved, stored = asyncio.run(scenario(crm_stack.database_url))
    assert saved == {"open", "by-code", "undone"}
    assert stored["open"] == (AT + timedelta(days=1), Decimal("3.10"), "sale-2", False)
    assert stored["by-code"] == (AT + timedelta(days=1), Decimal("0.99"), "sale-3", True)
    assert stored["raced"] == (AT, Decimal("1.00"), "sale-9", False), "the later writer overwrote the first"
    assert stored["undone"] == (None, None, None, False)
    assert stored["untouched"] == (None, None, None, False)


def test_one_offer_changed_twice_in_a_save_is_refused(crm_stack: StackEndpoints) -> None:
    async def twice() -> None:
        engine = await fresh_tables(crm_stack.database_url, "notifier_redemptions_twice", store.metadata)
        try:
            async with engine.begin() as conn:
                await store.save_redemptions(conn, [redeemed("o", None, "s1"), redeemed("o", "s1", None)])
        finally:
            await engine.dispose()

    with pytest.raises(ValueError, match="changed twice"):
        asyncio.run(twice())
