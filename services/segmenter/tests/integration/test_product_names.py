"""Product names kept by the segmenter (for `/v1/rules` and the ops console), on real PostgreSQL: the
latest description wins, and naming a product again with the same description writes nothing."""

from __future__ import annotations

import asyncio

import pytest
from crm_shared.testing import StackEndpoints, fresh_tables
from segmenter import store
from sqlalchemy import text

pytestmark = pytest.mark.integration


async def scenario(database_url: str) -> tuple[dict[str, str], bool, bool]:
    engine = await fresh_tables(database_url, "segmenter_names", store.metadata)
    try:
        async def versions() -> dict[str, str]:
            async with engine.connect() as conn:
                rows = await conn.execute(text("SELECT sku, xmin::text AS version FROM segmenter_names.products"))
                return {r.sku: r.version for r in rows}

        async with engine.begin() as conn:
            await store.name_products(conn, {"85123A": "WHITE HANGING HEART T-LIGHT HOLDER", "22423": "REGENCY CAKESTAND"})
        before = await versions()
        async with engine.begin() as conn:  # the same names again, one renamed, one new, one too long
            await store.name_products(conn, {"85123A": "WHITE HANGING HEART T-LIGHT HOLDER",
                                             "22423": "REGENCY CAKESTAND 3 TIER", "21232": "x" * 400})
        after = await versions()
        async with engine.connect() as conn:
            names = await store.descriptions(conn, ["85123A", "22423", "21232", "nope"])
        return names, before["85123A"] == after["85123A"], before["22423"] != after["22423"]
    finally:
        await engine.dispose()


def test_the_latest_description_wins_and_the_same_one_writes_nothing(crm_stack: StackEndpoints) -> None:
    names, unchanged_untouched, renamed_written = asyncio.run(scenario(crm_stack.database_url))
    assert names == {"85123A": "WHITE HANGING HEART T-LIGHT HOLDER", "22423": "REGENCY CAKESTAND 3 TIER",
                     "21232": "x" * 300}
    assert unchanged_untouched, "a product named again with the same description was rewritten"
    assert renamed_written
