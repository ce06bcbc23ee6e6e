"""The sales ledger and the outbox, in PostgreSQL.

A sale is durable before it is acknowledged: the ledger row and its outbox row are written in
one transaction. Concurrent requests share that transaction (group commit) so the ledger keeps
up with a busy chain while every terminal still waits for its own sale to be on disk.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from crm_shared.events import Sale, sale_recorded_document
from crm_shared.serde import encode_document, encode_key
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pos_gateway import SERVICE_NAME
from pos_gateway.domain import Refusal, check_return, decide_resubmission, fingerprint

log = logging.getLogger(__name__)

metadata = MetaData()

sales = Table(
    "sales", metadata,
    Column("store_id", String(64), primary_key=True),
    Column("sale_id", String(64), primary_key=True),
    Column("terminal_id", String(64), nullable=False),
    Column("member_id", String(64)),
    Column("kind", String(8), nullable=False),
    Column("original_sale_id", String(64)),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("total", Numeric, nullable=False),
    Column("line_count", Integer, nullable=False),
    Column("body", JSONB, nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("event_id", UUID(as_uuid=True), nullable=False, unique=True),
    Column("accepted_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_sales_occurred_at", "occurred_at"),
    Index("ix_sales_original", "store_id", "original_sale_id"),
)

outbox = Table(
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


@dataclass(frozen=True)
class Accepted:
    sale_id: str
    event_id: uuid.UUID
    new: bool  # False: the same sale was already recorded (a harmless replay)


Outcome = Accepted | Refusal


class LedgerUnavailable(Exception):
    """PostgreSQL could not be reached: the sale was NOT recorded, the terminal should retry."""


def ledger_row(sale: Sale, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "store_id": sale.store_id, "sale_id": sale.sale_id, "terminal_id": sale.terminal_id,
        "member_id": sale.member_id, "kind": sale.kind, "original_sale_id": sale.original_sale_id,
        "occurred_at": sale.occurred_at, "currency": sale.currency, "total": sale.total,
        "line_count": len(sale.lines), "body": body, "fingerprint": fingerprint(sale, body),
        "event_id": sale.event_id,
    }


def outbox_row(sale: Sale, topic: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """The event as it will go on the wire; `body` is the sale's JSON dump if the caller has it."""
    document = sale_recorded_document(sale, source=SERVICE_NAME,
                                      payload=body if body is not None else sale.model_dump(mode="json"))
    return {"event_id": sale.event_id, "topic": topic, "key": encode_key(sale.partition_key),
            "value": encode_document(document)}


class SaleWriter:
    """Group commit: every pending sale joins the next transaction; each caller awaits its own outcome."""

    def __init__(self, engine: AsyncEngine, *, sales_topic: str, max_batch: int, on_commit: Any = None) -> None:
        self.engine = engine
        self.sales_topic = sales_topic
        self.max_batch = max_batch
        self.on_commit = on_commit
        self._queue: asyncio.Queue[tuple[Sale, asyncio.Future[Outcome]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sale-writer")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def record(self, sale: Sale) -> Outcome:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        await self._queue.put((sale, future))
        return await future

    async def record_many(self, batch: Sequence[Sale]) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        futures = []
        for sale in batch:
            future: asyncio.Future[Outcome] = loop.create_future()
            futures.append(future)
            await self._queue.put((sale, future))
        return list(await asyncio.gather(*futures))

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            pending = [first]
            while len(pending) < self.max_batch and not self._queue.empty():
                pending.append(self._queue.get_nowait())
            try:
                outcomes = await self._commit([sale for sale, _ in pending])
            except Exception as exc:  # the whole batch failed: nobody is acknowledged
                log.error("ledger write failed", extra={"sales": len(pending), "error": repr(exc)})
                for _, future in pending:
                    if not future.done():
                        future.set_exception(LedgerUnavailable(str(exc)))
                continue
            for (_, future), outcome in zip(pending, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)
            if self.on_commit is not None:
                self.on_commit()

    async def _commit(self, batch: list[Sale]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(batch)
        first_index: dict[tuple[str, str], int] = {}
        plain: list[int] = []
        checked_returns: list[int] = []
        for index, sale in enumerate(batch):
            key = (sale.store_id, sale.sale_id)
            if key in first_index:
                continue  # settled after the insert, against the first one
            first_index[key] = index
            (checked_returns if sale.kind == "return" and sale.original_sale_id else plain).append(index)

        refused: dict[tuple[str, str], Refusal] = {}
        async with self.engine.begin() as conn:
            inserted = await self._insert(conn, [batch[i] for i in plain])
            for index in plain:
                if (batch[index].store_id, batch[index].sale_id) in inserted:
                    outcomes[index] = Accepted(batch[index].sale_id, batch[index].event_id, new=True)
            # Returns that name their original are checked one by one, seeing everything before them.
            for index in checked_returns:
                sale = batch[index]
                key = (sale.store_id, sale.sale_id)
                if await self._existing(conn, [key]):
                    continue  # a resubmission: settled below like any other
                refusal = await self._check_return(conn, sale)
                if refusal is not None:
                    refused[key] = refusal
                elif await self._insert(conn, [sale]):
                    outcomes[index] = Accepted(sale.sale_id, sale.event_id, new=True)
            unresolved = [i for i, outcome in enumerate(outcomes) if outcome is None]
            stored = await self._existing(conn, list({(batch[i].store_id, batch[i].sale_id) for i in unresolved}))
            for index in unresolved:
                sale = batch[index]
                key = (sale.store_id, sale.sale_id)
                row = stored.get(key)
                if row is None:
                    outcomes[index] = refused[key]
                    continue
                decision = decide_resubmission(stored_terminal=row["terminal_id"],
                                               stored_fingerprint=row["fingerprint"], stored_body=row["body"],
                                               sale=sale, sale_fingerprint=fingerprint(sale))
                outcomes[index] = (Accepted(sale.sale_id, row["event_id"], new=False)
                                   if decision.refusal is None else decision.refusal)
        return [outcome for outcome in outcomes if outcome is not None]

    async def _insert(self, conn: AsyncConnection, batch: list[Sale]) -> set[tuple[str, str]]:
        if not batch:
            return set()
        bodies = [sale.model_dump(mode="json") for sale in batch]  # once per sale: ledger, fingerprint, event
        result = await conn.execute(
            insert(sales).on_conflict_do_nothing().returning(sales.c.store_id, sales.c.sale_id),
            [ledger_row(sale, body) for sale, body in zip(batch, bodies, strict=True)],
        )
        inserted = {(row.store_id, row.sale_id) for row in result}
        new_rows = [outbox_row(sale, self.sales_topic, body) for sale, body in zip(batch, bodies, strict=True)
                    if (sale.store_id, sale.sale_id) in inserted]
        if new_rows:
            await conn.execute(insert(outbox), new_rows)
        return inserted

    async def _existing(self, conn: AsyncConnection, keys: list[tuple[str, str]]) -> dict[tuple[str, str], Any]:
        if not keys:
            return {}
        rows = await conn.execute(
            select(sales.c.store_id, sales.c.sale_id, sales.c.terminal_id, sales.c.fingerprint, sales.c.body,
                   sales.c.event_id)
            .where(func.row(sales.c.store_id, sales.c.sale_id).in_([func.row(s, i) for s, i in keys]))
        )
        return {(row.store_id, row.sale_id): row._mapping for row in rows}

    async def _check_return(self, conn: AsyncConnection, ret: Sale) -> Refusal | None:
        rows = await conn.execute(
            select(sales.c.sale_id, sales.c.kind, sales.c.body)
            .where(sales.c.store_id == ret.store_id)
            .where((sales.c.sale_id == ret.original_sale_id)
                   | ((sales.c.original_sale_id == ret.original_sale_id) & (sales.c.kind == "return")))
        )
        original: Sale | None = None
        earlier: list[Sale] = []
        for row in rows:
            recorded = Sale.model_validate(row.body)
            if row.sale_id == ret.original_sale_id:
                original = recorded
            else:
                earlier.append(recorded)
        return check_return(ret, original, earlier)


async def find_sale(engine: AsyncEngine, store_id: str, sale_id: str) -> dict[str, Any] | None:
    async with engine.connect() as conn:
        row = (await conn.execute(
            select(sales.c.body, sales.c.event_id, sales.c.accepted_at, sales.c.total,
                   select(func.count()).select_from(outbox)
                   .where(outbox.c.event_id == sales.c.event_id, outbox.c.published_at.is_(None))
                   .scalar_subquery().label("unpublished"))
            .where(sales.c.store_id == store_id, sales.c.sale_id == sale_id)
        )).first()
    return None if row is None else dict(row._mapping)


class BrokerRestarted(Exception):
    """The broker lost its topics since the last check: what was just sent may be gone."""


class OutboxRelay:
    """Publishes the outbox to the broker in order, then marks the rows published.

    If the broker is down the rows wait; when it is back (even restarted empty) they go out. One
    relay publishes at a time across replicas (a transaction-scoped advisory lock), keeping order.
    """

    ADVISORY_LOCK = 0x505F5341  # any constant shared by every gateway replica

    def __init__(self, engine: AsyncEngine, producer_factory: Any, *, batch_size: int, idle_poll: float,
                 retention_hours: float, ensure_topics: Any, sentinel_topic: str) -> None:
        self.engine = engine
        self.producer_factory = producer_factory
        self.batch_size = batch_size
        self.idle_poll = idle_poll
        self.retention_hours = retention_hours
        self.ensure_topics = ensure_topics
        self.sentinel_topic = sentinel_topic
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._producer: Any = None
        self.published = 0
        self.last_ok: float | None = None  # loop time of the last pass that reached the broker

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
                log.warning("outbox relay cannot publish yet; will retry", extra={"error": repr(exc), "retry_in_s": backoff})
                await self._close_producer()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                try:  # a broker restarted empty has lost its topics
                    await self.ensure_topics()
                except Exception:
                    log.debug("topic check failed", exc_info=True)

    async def publish_batch(self) -> int:
        async with self.engine.begin() as conn:
            locked = (await conn.execute(select(func.pg_try_advisory_xact_lock(self.ADVISORY_LOCK)))).scalar()
            if not locked:
                return 0
            rows = (await conn.execute(
                select(outbox.c.id, outbox.c.topic, outbox.c.key, outbox.c.value)
                .where(outbox.c.published_at.is_(None)).order_by(outbox.c.id).limit(self.batch_size)
            )).all()
            if not rows:
                return 0
            futures = [await self._producer.send(row.topic, value=row.value, key=row.key) for row in rows]
            await asyncio.wait_for(asyncio.gather(*futures), 15)
            # Acknowledged is not enough: a broker restarted empty acknowledges writes to topics it
            # no longer has. The rows stay unpublished unless the broker still has our sentinel topic.
            cluster = await self._producer.client.fetch_all_metadata()
            if self.sentinel_topic not in cluster.topics():
                raise BrokerRestarted(f"{self.sentinel_topic} is gone: the broker was restarted empty")
            await conn.execute(update(outbox).where(outbox.c.id.in_([row.id for row in rows]))
                               .values(published_at=func.now()))
        self.published += len(rows)
        return len(rows)

    async def purge(self) -> int:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                outbox.delete().where(
                    outbox.c.published_at < func.now() - text(f"interval '{float(self.retention_hours)} hours'")))
        return int(result.rowcount or 0)


async def pending_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        unpublished = select(func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))
        return int((await conn.execute(unpublished)).scalar() or 0)


async def republish(engine: AsyncEngine, *, sales_topic: str, since: datetime, until: datetime | None = None,
                    chunk: int = 2000) -> int:
    """Queue every recorded sale in an event-time range for publishing again (same event ids)."""
    queued = 0
    async with engine.begin() as conn:
        query = select(sales.c.body).where(sales.c.occurred_at >= since).order_by(sales.c.occurred_at, sales.c.sale_id)
        if until is not None:
            query = query.where(sales.c.occurred_at < until)
        result = await conn.stream(query.execution_options(yield_per=chunk))
        async for partition in result.partitions(chunk):
            rows = [outbox_row(Sale.model_validate(row.body), sales_topic) for row in partition]
            await conn.execute(insert(outbox), rows)
            queued += len(rows)
    return queued

