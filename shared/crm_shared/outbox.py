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

from sqlalchemy import BigInteger, Column, DateTime, Index, LargeBinary, MetaData, Table, Text, func, select, text, update
from sqlalchemy.dialects.postgresql import UUID, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from crm_shared.events import Envelope
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
    """Queue events for publishing, inside the caller's transaction."""
    if events:
        await conn.execute(insert(outbox), [
            {"event_id": e.event_id, "topic": topic, "key": encode_key(e.key), "value": encode(e)} for e in events])


class BrokerRestarted(Exception):
    """The broker lost its topics since the last check: what was just sent may be gone."""


class OutboxRelay:
    """Publishes an outbox table in id order, one relay at a time per table (advisory lock)."""

    def __init__(self, engine: AsyncEngine, outbox: Table, producer_factory: Callable[[], Any], *, lock_id: int,
                 sentinel_topic: str, ensure_topics: Callable[[], Awaitable[Any]], batch_size: int = 1000,
                 idle_poll: float = 0.2, retention_hours: float = 24.0) -> None:
        self.engine = engine
        self.outbox = outbox
        self.producer_factory = producer_factory
        self.lock_id = lock_id
        self.sentinel_topic = sentinel_topic
        self.ensure_topics = ensure_topics
        self.batch_size = batch_size
        self.idle_poll = idle_poll
        self.retention_hours = retention_hours
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._producer: Any = None
        self.published = 0
        self.last_ok: float | None = None

    def healthy(self, stale_after: float = 5.0) -> bool:
        return self.last_ok is not None and asyncio.get_running_loop().time() - self.last_ok < stale_after

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
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
        loop = asyncio.get_running_loop()
        while True:
            try:
                if self._producer is None:
                    producer = self.producer_factory()
                    await producer.start()
                    self._producer = producer
                sent = await self.publish_batch()
                self.last_ok = loop.time()
                backoff = 0.2
                if loop.time() - last_purge > 60:
                    await self.purge()
                    last_purge = loop.time()
                if sent == 0:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), self.idle_poll)
                    except TimeoutError:
                        pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox relay cannot publish yet; will retry",
                            extra={"error": repr(exc), "retry_in_s": backoff})
                await self._close_producer()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                try:  # a broker restarted empty has lost its topics
                    await self.ensure_topics()
                except Exception:
                    log.debug("topic check failed", exc_info=True)

    async def publish_batch(self) -> int:
        outbox = self.outbox
        async with self.engine.begin() as conn:
            if not (await conn.execute(select(func.pg_try_advisory_xact_lock(self.lock_id)))).scalar():
                return 0
            rows = (await conn.execute(
                select(outbox.c.id, outbox.c.topic, outbox.c.key, outbox.c.value)
                .where(outbox.c.published_at.is_(None)).order_by(outbox.c.id).limit(self.batch_size))).all()
            if not rows:
                return 0
            futures = [await self._producer.send(row.topic, value=row.value, key=row.key) for row in rows]
            await asyncio.wait_for(asyncio.gather(*futures), 15)
            cluster = await self._producer.client.fetch_all_metadata()
            if self.sentinel_topic not in cluster.topics():
                raise BrokerRestarted(f"{self.sentinel_topic} is gone: the broker was restarted empty")
            await conn.execute(update(outbox).where(outbox.c.id.in_([row.id for row in rows]))
                               .values(published_at=func.now()))
        self.published += len(rows)
        return len(rows)

    async def purge(self) -> int:
        outbox = self.outbox
        async with self.engine.begin() as conn:
            result = await conn.execute(outbox.delete().where(
                outbox.c.published_at < func.now() - text(f"interval '{float(self.retention_hours)} hours'")))
        return int(result.rowcount or 0)

