"""The transactional outbox every producing service uses: an event is written to the `outbox`
table in the same transaction as the change it announces, and a relay publishes it afterwards.

A change is never visible without its event, and an event never goes out for a change that
rolled back. Publishing is at-least-once: the relay marks rows only after the broker has them
(and after checking the broker still has its topics: the embedded broker, restarted empty,
acknowledges writes to topics it no longer has). Consumers dedupe by event id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, Index, LargeBinary, MetaData, Table, Text, func, text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from crm_shared.db import asyncpg_connection
from crm_shared.events import Envelope
from crm_shared.kafka import send_in_batches
from crm_shared.serde import encode, encode_key

log = logging.getLogger(__name__)


def outbox_table(metadata: MetaData) -> Table:
    return Table(
        "outbox", metadata,
        Column("id", BigInteger, primary_key=True, autoincrement=True),
        Column("event_id", UUID(as_uuid=True), nullable=False),
        Column("topic", Text, nullable=False),
        Column("key", LargeBinary, nullable=False),
        Column("value", LargeBinary, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("published_at", DateTime(timezone=True)),
        Index("ix_outbox_unpublished", "id", postgresql_where=text("published_at IS NULL")),
    )


async def add_events(conn: AsyncConnection, outbox: Table, topic: str, events: list[Envelope[Any]]) -> None:
    """Queue events for publishing, inside the caller's transaction, in the order given (the serial id
    is the publishing order). One statement of three array parameters, whatever the number of events:
    an executemany ran the INSERT once per event (a profile batch queues thousands)."""
    if events:
        await conn.execute(
            text(f"INSERT INTO {outbox.name} (event_id, topic, key, value) SELECT rows.event_id, :topic, rows.key, rows.value "
                 "FROM unnest(CAST(:ids AS uuid[]), CAST(:keys AS bytea[]), CAST(:values AS bytea[])) "
                 "WITH ORDINALITY AS rows(event_id, key, value, row_number) ORDER BY rows.row_number"),
            {"topic": topic, "ids": [e.event_id for e in events], "keys": [encode_key(e.key) for e in events],
             "values": [encode(e) for e in events]})


class BrokerRestarted(Exception):
    """The broker lost its topics since the last check: what was just sent may be gone."""


def database_connection_lost(exc: BaseException) -> bool:
    """The error says the database connection itself is gone (PostgreSQL restarted or unreachable)."""
    import asyncpg

    return isinstance(exc, (asyncpg.InterfaceError, asyncpg.PostgresConnectionError, asyncpg.AdminShutdownError,
                            asyncpg.CannotConnectNowError, ConnectionError))


class OutboxRelay:
    """Publishes an outbox table in id order, one relay at a time per table (advisory lock).

    Options for a relay that runs in its own process (pos-gateway's): `wake_channel` is a
    PostgreSQL NOTIFY channel that new outbox rows signal (a trigger), so the relay wakes at once
    instead of waiting for its poll; `heartbeat` is awaited after a pass that reached the broker, at
    most every `heartbeat_every` seconds, so another process can tell how the relay is doing;
    `busy_linger` lets rows gather between passes under load (a pass costs nearly the same for 10
    rows as for 1,000; a relay woken from idle still publishes at once).
    """

    def __init__(self, engine: AsyncEngine, outbox: Table, producer_factory: Callable[[], Any], *, lock_id: int,
                 sentinel_topic: str, ensure_topics: Callable[[], Awaitable[Any]], batch_size: int = 1000,
                 idle_poll: float = 0.2, retention_hours: float = 24.0, wake_channel: str | None = None,
                 heartbeat: Callable[[], Awaitable[Any]] | None = None, heartbeat_every: float = 1.0,
                 busy_linger: float = 0.0) -> None:
        self.engine = engine
        self.outbox = outbox
        self.producer_factory = producer_factory
        self.lock_id = lock_id
        self.sentinel_topic = sentinel_topic
        self.ensure_topics = ensure_topics
        self.batch_size = batch_size
        self.idle_poll = idle_poll
        self.retention_hours = retention_hours
        self.wake_channel = wake_channel
        self.heartbeat = heartbeat
        self.heartbeat_every = heartbeat_every
        self.busy_linger = busy_linger
        table = outbox.fullname
        # Plain asyncpg statements: several passes a second, each a few statements.
        self._select_sql = (f"SELECT id, topic, key, value FROM {table} WHERE published_at IS NULL "
                            "ORDER BY id LIMIT $1")
        self._mark_sql = f"UPDATE {table} SET published_at = now() WHERE id = ANY($1::bigint[])"
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._producer: Any = None
        self.published = 0
        self.last_ok: float | None = None  # loop time of the last pass that reached the broker

    def healthy(self, stale_after: float = 5.0) -> bool:
        return self.last_ok is not None and asyncio.get_running_loop().time() - self.last_ok < stale_after

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(), name="outbox-relay")]
        if self.wake_channel is not None:
            self._tasks.append(asyncio.create_task(self._listen(self.wake_channel), name="outbox-relay-wakeup"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._close_producer()

    async def _close_producer(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            try:
                await asyncio.wait_for(producer.stop(), 5)
            except Exception:
                log.debug("producer stop failed", exc_info=True)

    async def _run(self) -> None:
        backoff = 0.2
        last_purge = 0.0
        last_beat = -self.heartbeat_every
        loop = asyncio.get_running_loop()
        while True:
            try:
                if self._producer is None:
                    producer = self.producer_factory()
                    await producer.start()
                    self._producer = producer
                self._wake.clear()  # before the pass: rows committed during it wake the next one
                sent = await self.publish_batch()
                self.last_ok = loop.time()
                backoff = 0.2
                if self.heartbeat is not None and self.last_ok - last_beat >= self.heartbeat_every:
                    await self.heartbeat()
                    last_beat = self.last_ok
                if loop.time() - last_purge > 60:
                    await self.purge()
                    last_purge = loop.time()
                if sent == 0:
                    try:
                        await asyncio.wait_for(self._wake.wait(), self.idle_poll)
                    except TimeoutError:
                        pass
                elif sent < self.batch_size and self.busy_linger > 0:
                    await asyncio.sleep(self.busy_linger)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox relay cannot publish yet; will retry",
                            extra={"error": repr(exc), "retry_in_s": backoff})
                await self._close_producer()
                if database_connection_lost(exc):
                    # The relay talks to asyncpg under SQLAlchemy, so the pool never learns that its
                    # connections died with the server: drop them all, the next pass opens fresh ones.
                    await self.engine.dispose()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                try:  # a broker restarted empty has lost its topics
                    await self.ensure_topics()
                except Exception:
                    log.debug("topic check failed", exc_info=True)

    async def _listen(self, channel: str) -> None:
        """Hold a connection that LISTENs for new outbox rows; while it is lost, the idle poll covers."""
        while True:
            try:
                await self._listen_until_lost(channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("outbox wake-up listener lost; polling meanwhile", extra={"error": repr(exc)})
            await asyncio.sleep(self.idle_poll)

    async def _listen_until_lost(self, channel: str) -> None:
        lost = asyncio.Event()

        def woken(*_: Any) -> None:
            self._wake.set()

        def closed(_: Any) -> None:
            lost.set()

        async with self.engine.connect() as conn:
            driver = await asyncpg_connection(conn)
            driver.add_termination_listener(closed)
            await driver.add_listener(channel, woken)
            try:
                await lost.wait()
            finally:
                driver.remove_termination_listener(closed)
                if not driver.is_closed():
                    await driver.remove_listener(channel, woken)

    async def publish_batch(self) -> int:
        async with self.engine.connect() as conn:
            db = await asyncpg_connection(conn)
            async with db.transaction():
                if not await db.fetchval("SELECT pg_try_advisory_xact_lock($1)", self.lock_id):
                    return 0
                rows = await db.fetch(self._select_sql, self.batch_size)
                if not rows:
                    return 0
                records = [(topic, key, value) for _, topic, key, value in rows]
                await asyncio.wait_for(send_in_batches(self._producer, records), 15)
                # Acknowledged is not enough: a broker restarted empty acknowledges writes to topics it
                # no longer has. The rows stay unpublished unless the broker still has the sentinel topic.
                cluster = await self._producer.client.fetch_all_metadata()
                if self.sentinel_topic not in cluster.topics():
                    raise BrokerRestarted(f"{self.sentinel_topic} is gone: the broker was restarted empty")
                await db.execute(self._mark_sql, [row[0] for row in rows])
        self.published += len(rows)
        return len(rows)

    async def purge(self) -> int:
        outbox = self.outbox
        async with self.engine.begin() as conn:
            result = await conn.execute(outbox.delete().where(
                outbox.c.published_at < func.now() - text(f"interval '{float(self.retention_hours)} hours'")))
        return int(result.rowcount or 0)



def relay_for(common: Any, engine: AsyncEngine, outbox: Table, *, service: str, lock_id: int,
              idle_poll: float = 0.2) -> OutboxRelay:
    """The usual relay of a service's outbox (`common` being its `CommonSettings`): one relay at a
    time per table (`lock_id`), the broker sentinel checked, topics recreated after an empty restart."""
    from functools import partial

    from crm_shared.kafka import ensure_topics, make_producer
    from crm_shared.topics import BROKER_SENTINEL

    prefix = common.topic_prefix
    return OutboxRelay(
        engine, outbox, partial(make_producer, common.kafka_bootstrap, client_id=f"{service}-relay"),
        lock_id=lock_id, sentinel_topic=BROKER_SENTINEL.qualified(prefix), idle_poll=idle_poll,
        ensure_topics=partial(ensure_topics, common.kafka_bootstrap, prefix=prefix, partitions=common.topic_partitions,
                              replication=common.topic_replication))
