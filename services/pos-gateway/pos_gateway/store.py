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

import orjson
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

relay_heartbeat = Table(
    "relay_heartbeat", metadata,
    Column("relay_id", Text, primary_key=True),  # host:pid of the relay's process
    Column("last_ok", DateTime(timezone=True), nullable=False),
)

RELAY_STALE_AFTER = 5.0  # seconds without a pass that reached the broker before readiness says it is down


@dataclass(frozen=True)
class Accepted:
    sale_id: str
    event_id: uuid.UUID
    new: bool  # False: the same sale was already recorded (a harmless replay)


Outcome = Accepted | Refusal


class LedgerUnavailable(Exception):
    """PostgreSQL could not be reached: the sale was NOT recorded, the terminal should retry."""


def outbox_row(sale: Sale, topic: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """The event as it will go on the wire; `body` is the sale's JSON dump if the caller has it."""
    return {"event_id": sale.event_id, "topic": topic, "key": encode_key(sale.partition_key),
            "value": event_value(sale, body if body is not None else sale.model_dump(mode="json"))}


def event_value(sale: Sale, body: dict[str, Any]) -> bytes:
    return encode_document(sale_recorded_document(sale, source=SERVICE_NAME, payload=body))


RETURNS_LOCK = 0x52455455  # advisory lock class of "returns against one original sale"

# The ledger rows and their outbox rows in one round trip, one array per column: no per-row SQL
# compilation or parameter processing in Python. The outbox gets a row only for a sale the
# ledger did not have (ON CONFLICT DO NOTHING RETURNING), in the order the sales came in, so the
# relay publishes them in that order. The event ids returned are the sales that were new.
RECORD_SALES = """
WITH incoming AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::timestamptz[], $8::text[], $9::numeric[], $10::int[], $11::text[], $12::text[],
                         $13::uuid[], $14::bytea[], $15::bytea[]) WITH ORDINALITY
        AS t(store_id, sale_id, terminal_id, member_id, kind, original_sale_id, occurred_at, currency, total,
             line_count, body, fingerprint, event_id, key, value, position)
), recorded AS (
    INSERT INTO sales (store_id, sale_id, terminal_id, member_id, kind, original_sale_id, occurred_at, currency,
                       total, line_count, body, fingerprint, event_id)
    SELECT store_id, sale_id, terminal_id, member_id, kind, original_sale_id, occurred_at, currency, total,
           line_count, body::jsonb, fingerprint, event_id
    FROM incoming
    ORDER BY store_id, sale_id  -- every transaction locks keys in one order: concurrent batches cannot deadlock
    ON CONFLICT DO NOTHING
    RETURNING event_id
)
INSERT INTO outbox (event_id, topic, key, value)
SELECT incoming.event_id, $16, incoming.key, incoming.value
FROM incoming JOIN recorded USING (event_id)
ORDER BY incoming.position
RETURNING event_id
"""


def ledger_columns(batch: Sequence[Sale], bodies: Sequence[dict[str, Any]], topic: str) -> tuple[Any, ...]:
    """RECORD_SALES's parameters: one list per column (in its order), then the topic."""
    rows = [
        (sale.store_id, sale.sale_id, sale.terminal_id, sale.member_id, sale.kind, sale.original_sale_id,
         sale.occurred_at, sale.currency, sale.total, len(sale.lines), orjson.dumps(body).decode(),
         fingerprint(sale, body), sale.event_id, encode_key(sale.partition_key), event_value(sale, body))
        for sale, body in zip(batch, bodies, strict=True)
    ]
    return (*(list(column) for column in zip(*rows, strict=True)), topic)


async def asyncpg_connection(conn: AsyncConnection) -> Any:
    """The asyncpg connection under a SQLAlchemy one, for the hot paths that skip SQLAlchemy."""
    driver = (await conn.get_raw_connection()).driver_connection
    if driver is None:
        raise LedgerUnavailable("the database connection is closed")
    return driver


class SaleWriter:
    """Group commit: every pending sale joins the next transaction; each caller awaits its own outcome.

    Up to `concurrency` transactions are in flight, each on its own connection, so the next batch
    forms and is sent while the previous one waits for its commit. A batch starts as soon as a
    slot is free and takes every sale waiting by then (no dispatcher task in between: under load,
    each extra hop through the event loop adds its latency to every sale). The unit of work runs
    on the asyncpg connection under SQLAlchemy's: this is the hot path, and SQLAlchemy's
    per-transaction and per-row work cost more CPU than the sales themselves.
    """

    def __init__(self, engine: AsyncEngine, *, sales_topic: str, max_batch: int, concurrency: int = 1,
                 on_commit: Any = None) -> None:
        self.engine = engine
        self.sales_topic = sales_topic
        self.max_batch = max_batch
        self.on_commit = on_commit
        self._waiting: list[tuple[Sale, asyncio.Future[Outcome]]] = []
        self._free_slots = concurrency
        self._starting = False  # a batch task is about to take the waiting sales: later ones join it
        self._in_flight: set[asyncio.Task[None]] = set()
        self._idle_connections: list[AsyncConnection] = []  # held between batches: no pool round trip
        self._stopping = False

    async def stop(self) -> None:
        self._stopping = True
        tasks = list(self._in_flight)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        while self._idle_connections:
            await self._drop(self._idle_connections.pop())

    async def record(self, sale: Sale) -> Outcome:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiting.append((sale, future))
        self._start_batch()
        return await future

    async def record_many(self, batch: Sequence[Sale]) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Outcome]] = []
        for sale in batch:
            futures.append(loop.create_future())
            self._waiting.append((sale, futures[-1]))
        self._start_batch()
        return list(await asyncio.gather(*futures))

    def _start_batch(self) -> None:
        if self._waiting and self._free_slots > 0 and not self._starting and not self._stopping:
            self._free_slots -= 1
            self._starting = True
            task = asyncio.create_task(self._write(), name="sale-writer-batch")
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _write(self) -> None:
        self._starting = False
        pending, self._waiting = self._waiting[:self.max_batch], self._waiting[self.max_batch:]
        try:
            outcomes = await self._commit_on_held_connection([sale for sale, _ in pending])
        except Exception as exc:  # the whole batch failed: nobody is acknowledged
            log.error("ledger write failed", extra={"sales": len(pending), "error": repr(exc)})
            for _, future in pending:
                if not future.done():
                    future.set_exception(LedgerUnavailable(str(exc)))
            return
        finally:
            self._free_slots += 1
            self._start_batch()  # whatever arrived meanwhile goes next
        for (_, future), outcome in zip(pending, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)
        if self.on_commit is not None:
            self.on_commit()

    async def _commit_on_held_connection(self, batch: list[Sale]) -> list[Outcome]:
        connection = self._idle_connections.pop() if self._idle_connections else await self.engine.connect()
        try:
            outcomes = await self._commit(await asyncpg_connection(connection), batch)
        except BaseException:
            await self._drop(connection)  # the pool gives the next batch a fresh one
            raise
        self._idle_connections.append(connection)
        return outcomes

    @staticmethod
    async def _drop(connection: AsyncConnection) -> None:
        try:
            await connection.invalidate()
            await connection.close()
        except Exception:
            log.debug("closing a writer connection failed", exc_info=True)

    async def _commit(self, db: Any, batch: list[Sale]) -> list[Outcome]:
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
        if not checked_returns:
            # The usual batch is one statement, so one transaction by itself and one round trip
            # (under load each extra round trip waits its turn behind a busy event loop).
            self._settle_inserted(batch, plain, await self._insert(db, [batch[i] for i in plain]), outcomes)
        else:
            async with db.transaction():
                # Returns against the same original wait for each other, in any transaction of any
                # process, so two in flight cannot both give back the last unit; taken in one order.
                originals = sorted({(batch[i].store_id, batch[i].original_sale_id or "") for i in checked_returns})
                for store_id, original_sale_id in originals:
                    await db.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", RETURNS_LOCK,
                                     f"{store_id}/{original_sale_id}")
                self._settle_inserted(batch, plain, await self._insert(db, [batch[i] for i in plain]), outcomes)
                # Returns that name their original are checked one by one, seeing everything before them.
                for index in checked_returns:
                    sale = batch[index]
                    key = (sale.store_id, sale.sale_id)
                    if await self._existing(db, [key]):
                        continue  # a resubmission: settled below like any other
                    refusal = await self._check_return(db, sale)
                    if refusal is not None:
                        refused[key] = refusal
                    elif await self._insert(db, [sale]):
                        outcomes[index] = Accepted(sale.sale_id, sale.event_id, new=True)
        unresolved = [i for i, outcome in enumerate(outcomes) if outcome is None]
        stored = await self._existing(db, list({(batch[i].store_id, batch[i].sale_id) for i in unresolved}))
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

    @staticmethod
    def _settle_inserted(batch: list[Sale], indexes: list[int], inserted: set[tuple[str, str]],
                         outcomes: list[Outcome | None]) -> None:
        for index in indexes:
            if (batch[index].store_id, batch[index].sale_id) in inserted:
                outcomes[index] = Accepted(batch[index].sale_id, batch[index].event_id, new=True)

    async def _insert(self, db: Any, batch: list[Sale]) -> set[tuple[str, str]]:
        if not batch:
            return set()
        bodies = [sale.model_dump(mode="json") for sale in batch]  # once per sale: ledger, fingerprint, event
        rows = await db.fetch(RECORD_SALES, *ledger_columns(batch, bodies, self.sales_topic))
        by_event = {sale.event_id: (sale.store_id, sale.sale_id) for sale in batch}
        return {by_event[row["event_id"]] for row in rows}

    async def _existing(self, db: Any, keys: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
        if not keys:
            return {}
        rows = await db.fetch(
            "SELECT store_id, sale_id, terminal_id, fingerprint, body::text AS body, event_id FROM sales "
            "WHERE (store_id, sale_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
            [store for store, _ in keys], [sale_id for _, sale_id in keys])
        return {(row["store_id"], row["sale_id"]): {**row, "body": orjson.loads(row["body"])} for row in rows}

    async def _check_return(self, db: Any, ret: Sale) -> Refusal | None:
        rows = await db.fetch(
            "SELECT sale_id, body::text AS body FROM sales WHERE store_id = $1 "
            "AND (sale_id = $2 OR (original_sale_id = $2 AND kind = 'return'))",
            ret.store_id, ret.original_sale_id)
        original: Sale | None = None
        earlier: list[Sale] = []
        for row in rows:
            recorded = Sale.model_validate_json(row["body"])
            if row["sale_id"] == ret.original_sale_id:
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
    It may run in another process than the API: a NOTIFY on `wake_channel` (the outbox trigger)
    wakes it, and a heartbeat row says when it last reached the broker.
    """

    ADVISORY_LOCK = 0x505F5341  # any constant shared by every gateway replica
    HEARTBEAT_EVERY = 1.0  # seconds; readiness calls the broker down after RELAY_STALE_AFTER
    # Under load, rows gather a moment between passes: a pass costs nearly the same for 10 rows as for
    # 1,000. A relay woken from idle still publishes at once.
    BUSY_LINGER = 0.05

    def __init__(self, engine: AsyncEngine, producer_factory: Any, *, batch_size: int, idle_poll: float,
                 retention_hours: float, ensure_topics: Any, sentinel_topic: str, wake_channel: str,
                 relay_id: str) -> None:
        self.engine = engine
        self.producer_factory = producer_factory
        self.batch_size = batch_size
        self.idle_poll = idle_poll
        self.retention_hours = retention_hours
        self.ensure_topics = ensure_topics
        self.sentinel_topic = sentinel_topic
        self.wake_channel = wake_channel
        self.relay_id = relay_id
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._producer: Any = None
        self.published = 0
        self.last_ok: float | None = None  # loop time of the last pass that reached the broker

    def healthy(self, stale_after: float = RELAY_STALE_AFTER) -> bool:
        return self.last_ok is not None and asyncio.get_running_loop().time() - self.last_ok < stale_after

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(), name="outbox-relay"),
                       asyncio.create_task(self._listen(), name="outbox-relay-wakeup")]

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
        last_beat = -self.HEARTBEAT_EVERY
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
                if self.last_ok - last_beat >= self.HEARTBEAT_EVERY:
                    await self.beat()
                    last_beat = self.last_ok
                if loop.time() - last_purge > 60:
                    await self.purge()
                    last_purge = loop.time()
                if sent == 0:
                    try:
                        await asyncio.wait_for(self._wake.wait(), self.idle_poll)
                    except TimeoutError:
                        pass
                elif sent < self.batch_size:
                    await asyncio.sleep(self.BUSY_LINGER)
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

    async def _listen(self) -> None:
        """Hold a connection that LISTENs for new outbox rows; while it is lost, the idle poll covers."""
        while True:
            try:
                await self._listen_until_lost()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("outbox wake-up listener lost; polling meanwhile", extra={"error": repr(exc)})
            await asyncio.sleep(self.idle_poll)

    async def _listen_until_lost(self) -> None:
        lost = asyncio.Event()

        def woken(*_: Any) -> None:
            self._wake.set()

        def closed(_: Any) -> None:
            lost.set()

        async with self.engine.connect() as conn:
            driver = await asyncpg_connection(conn)
            driver.add_termination_listener(closed)
            await driver.add_listener(self.wake_channel, woken)
            try:
                await lost.wait()
            finally:
                driver.remove_termination_listener(closed)
                if not driver.is_closed():
                    await driver.remove_listener(self.wake_channel, woken)

    async def beat(self) -> None:
        """Record that this relay just reached the broker (the database's clock, as readiness reads it)."""
        async with self.engine.begin() as conn:
            await conn.execute(insert(relay_heartbeat).values(relay_id=self.relay_id, last_ok=func.now())
                               .on_conflict_do_update(index_elements=[relay_heartbeat.c.relay_id],
                                                      set_={"last_ok": func.now()}))

    async def publish_batch(self) -> int:
        async with self.engine.connect() as conn:
            # Plain asyncpg statements: several passes a second, each a few statements.
            db = await asyncpg_connection(conn)
            async with db.transaction():
                if not await db.fetchval("SELECT pg_try_advisory_xact_lock($1)", self.ADVISORY_LOCK):
                    return 0
                rows = await db.fetch("SELECT id, topic, key, value FROM outbox WHERE published_at IS NULL "
                                      "ORDER BY id LIMIT $1", self.batch_size)
                if not rows:
                    return 0
                futures = [await self._producer.send(topic, value=value, key=key) for _, topic, key, value in rows]
                await asyncio.wait_for(asyncio.gather(*futures), 15)
                # Acknowledged is not enough: a broker restarted empty acknowledges writes to topics it
                # no longer has. The rows stay unpublished unless the broker still has our sentinel topic.
                cluster = await self._producer.client.fetch_all_metadata()
                if self.sentinel_topic not in cluster.topics():
                    raise BrokerRestarted(f"{self.sentinel_topic} is gone: the broker was restarted empty")
                await db.execute("UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])",
                                 [row[0] for row in rows])
        self.published += len(rows)
        return len(rows)

    async def purge(self) -> int:
        older = func.now() - text(f"interval '{float(self.retention_hours)} hours'")
        async with self.engine.begin() as conn:
            result = await conn.execute(outbox.delete().where(outbox.c.published_at < older))
            await conn.execute(relay_heartbeat.delete().where(relay_heartbeat.c.last_ok < older))  # relays long gone
        return int(result.rowcount or 0)


async def relay_heartbeat_age(engine: AsyncEngine) -> float | None:
    """Seconds since any relay of this gateway last reached the broker; None if none ever did."""
    async with engine.connect() as conn:
        age = (await conn.execute(
            select(func.extract("epoch", func.now() - func.max(relay_heartbeat.c.last_ok))))).scalar()
    return None if age is None else float(age)


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

