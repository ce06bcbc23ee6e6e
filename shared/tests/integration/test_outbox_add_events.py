"""`crm_shared.outbox.add_events` on the real PostgreSQL: events are queued in the order given (the
serial id is the relay's publishing order), keys and values come back byte for byte, and one
prepared statement serves every batch size (it replaced a per-event executemany)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from crm_shared.events import MemberErased, member_event
from crm_shared.outbox import add_events, outbox_table
from crm_shared.serde import encode
from crm_shared.testing import StackEndpoints, fresh_tables
from sqlalchemy import MetaData, select, text

pytestmark = pytest.mark.integration

SCHEMA = "outbox_check"
metadata = MetaData()
outbox = outbox_table(metadata)
START = datetime(2011, 1, 3, 9, 0, tzinfo=UTC)


def events(n: int, offset: int) -> list[Any]:
    # keys in an order no sort of them gives; non-ASCII in the value
    return [member_event(MemberErased(member_id=f"m-{(i * 7919) % 1000:03d}", erased_at=START + timedelta(seconds=i),
                                      requested_by=f"clé-{i}"),
                         event_type="MemberErased", member_id=f"m-{(i * 7919) % 1000:03d}",
                         occurred_at=START + timedelta(seconds=i), source="test", identity=f"outbox/{i}")
            for i in range(offset, offset + n)]


async def scenario(database_url: str) -> tuple[list[tuple[uuid.UUID, str, bytes, bytes]], list[Any], int]:
    engine = await fresh_tables(database_url, SCHEMA, metadata)
    try:
        queued: list[Any] = []
        async with engine.begin() as conn:
            for n, offset in ((1, 0), (7, 1), (2500, 8)):
                batch = events(n, offset)
                await add_events(conn, outbox, "crm.member.erased.v1", batch)
                queued += batch
            await add_events(conn, outbox, "crm.member.erased.v1", [])  # nothing to queue: no error, no row
            statements = await conn.scalar(text("SELECT count(*) FROM pg_prepared_statements "
                                                "WHERE statement LIKE 'INSERT INTO outbox%unnest%'"))
            stored = [(r.event_id, r.topic, r.key, r.value) for r in await conn.execute(
                select(outbox.c.event_id, outbox.c.topic, outbox.c.key, outbox.c.value).order_by(outbox.c.id))]
        return stored, queued, int(statements or 0)
    finally:
        await engine.dispose()


def test_events_are_queued_in_order_byte_for_byte_by_one_statement(crm_stack: StackEndpoints) -> None:
    stored, queued, statements = asyncio.run(scenario(crm_stack.database_url))
    assert len(stored) == 2508
    assert [s[0] for s in stored] == [e.event_id for e in queued], "not queued in the order given"
    assert all(s[1] == "crm.member.erased.v1" for s in stored)
    assert [s[2] for s in stored] == [e.key.encode() for e in queued]
    assert [s[3] for s in stored] == [encode(e) for e in queued]
    assert statements == 1
