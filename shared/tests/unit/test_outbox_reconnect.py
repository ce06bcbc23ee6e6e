"""The outbox relay after PostgreSQL restarted: found by the whole-system drill, where the gateway's relay
kept taking dead pooled connections ("connection is closed") for as long as it ran."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from crm_shared.outbox import OutboxRelay, database_connection_lost
from sqlalchemy import BigInteger, Column, MetaData, Table


class DeadPoolEngine:
    """An engine whose pooled connection died with the server until the pool is disposed."""

    def __init__(self) -> None:
        self.disposed = 0
        self.connects_after_dispose = 0

    def connect(self) -> Any:
        engine = self

        class Connection:
            async def __aenter__(self) -> Any:
                if engine.disposed == 0:
                    raise asyncpg.InterfaceError("connection is closed")
                engine.connects_after_dispose += 1
                raise asyncio.CancelledError  # a fresh connection: far enough for this test

            async def __aexit__(self, *_: Any) -> None:
                return None

        return Connection()

    async def dispose(self) -> None:
        self.disposed += 1


class Producer:
    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


def test_a_dead_database_connection_empties_the_pool_so_the_next_pass_reconnects() -> None:
    engine = DeadPoolEngine()
    outbox = Table("outbox", MetaData(), Column("id", BigInteger, primary_key=True))

    async def ensure_topics() -> None:
        return None

    relay = OutboxRelay(engine, outbox, Producer, lock_id=1, sentinel_topic="sentinel",  # type: ignore[arg-type]
                        ensure_topics=ensure_topics)

    async def run() -> None:
        try:
            await asyncio.wait_for(relay._run(), 5)
        except (asyncio.CancelledError, TimeoutError):
            pass

    asyncio.run(run())
    assert engine.disposed == 1
    assert engine.connects_after_dispose == 1


def test_only_connection_errors_count_as_a_lost_database() -> None:
    assert database_connection_lost(asyncpg.InterfaceError("connection is closed"))
    assert database_connection_lost(asyncpg.exceptions.ConnectionDoesNotExistError("gone"))
    assert database_connection_lost(ConnectionRefusedError())
    assert not database_connection_lost(asyncpg.UniqueViolationError("duplicate key"))
    assert not database_connection_lost(TimeoutError())
