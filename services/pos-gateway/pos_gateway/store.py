"""The sales ledger and the outbox, in PostgreSQL.

A sale is durable before it is acknowledged: the ledger row and its outbox row are written in
one transaction. Concurrent requests share that transaction (group commit) so the ledger keeps
up with a busy chain while every terminal still waits for its own sale to be on disk.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from crm_shared.db import asyncpg_connection
from crm_shared.events import Sale, sale_recorded_document
from crm_shared.outbox import outbox_table
from crm_shared.serde import encode_document, encode_key
from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    func,
    select,
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

outbox = outbox_table(metadata)

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


class SaleWriter:
    """Group commit: every pending sale joins the next transaction; each caller awaits its own outcome.

    Up to `concurrency` transactions are in flight, each on its own connection, so the next batch
    forms and is sent while the previous one waits for its commit. A sale whose partition key (its
    member, else its store) has a sale in a transaction still in flight waits for that one to commit,
    and so does every later sale of that key: two concurrent transactions never hold sales of one key,
    so the outbox ids of a key's sales follow their acceptance order and the relay, which publishes
    committed rows by id, puts them on the topic in that order. A batch starts as soon as a
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
        self._keys_in_flight: Counter[str] = Counter()  # partition keys with a sale in a transaction in flight
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

    def _take(self) -> list[tuple[Sale, asyncio.Future[Outcome]]]:
        """Up to `max_batch` waiting sales in arrival order, leaving behind a sale whose key is in flight,
        and every sale of that key after it."""
        if not self._keys_in_flight:
            taken, self._waiting = self._waiting[:self.max_batch], self._waiting[self.max_batch:]
        else:
            taken, left, held = [], [], set()
            for item in self._waiting:
                key = item[0].partition_key
                if len(taken) < self.max_batch and key not in held and key not in self._keys_in_flight:
                    taken.append(item)
                else:
                    left.append(item)
                    held.add(key)
            self._waiting = left
        self._keys_in_flight.update(sale.partition_key for sale, _ in taken)
        return taken

    async def _write(self) -> None:
        self._starting = False
        pending = self._take()
        if not pending:  # every waiting sale waits for a key in flight: that batch's end starts the next
            self._free_slots += 1
            return
        try:
            outcomes = await self._commit_on_held_connection([sale for sale, _ in pending])
        except Exception as exc:  # the whole batch failed: nobody is acknowledged
            log.error("ledger write failed", extra={"sales": len(pending), "error": repr(exc)})
            for _, future in pending:
                if not future.done():
                    future.set_exception(LedgerUnavailable(str(exc)))
            return
        finally:
            self._keys_in_flight.subtract(sale.partition_key for sale, _ in pending)
            self._keys_in_flight = +self._keys_in_flight  # keys with nothing in flight any more leave
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


async def beat(engine: AsyncEngine, relay_id: str, *, retention_hours: float) -> None:
    """Record that the relay `relay_id` just reached the broker (the database's clock, as readiness reads
    it), and forget relays silent for longer than the outbox keeps its rows (processes long gone)."""
    async with engine.connect() as conn:
        db = await asyncpg_connection(conn)
        async with db.transaction():
            await db.execute("INSERT INTO relay_heartbeat (relay_id, last_ok) VALUES ($1, now()) "
                             "ON CONFLICT (relay_id) DO UPDATE SET last_ok = now()", relay_id)
            await db.execute("DELETE FROM relay_heartbeat WHERE last_ok < now() - make_interval(secs => $1)",
                             retention_hours * 3600)


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

