"""The idempotent consumer every service copies: decode, apply in one transaction with the record of
what was applied, then commit offsets.

    effect + "event id applied"  --one PostgreSQL transaction-->  commit offsets

Delivery is at-least-once; a redelivered event finds its id in `applied_events` and is skipped,
inside the same transaction that would have applied it. A record that cannot be decoded or
breaks the contract goes to the topic's `.dlq` twin with the reason, and the consumer goes on.
"""

from __future__ import annotations

import asyncio
import logging
import math
import traceback
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from prometheus_client import Counter
from sqlalchemy import Column, DateTime, MetaData, String, Table, func, select, text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from crm_shared.kafka import dead_letter
from crm_shared.serde import PoisonMessage

log = logging.getLogger(__name__)

E = TypeVar("E")

EVENTS_APPLIED = Counter("crm_consumer_events_applied_total", "Events applied", ["consumer"])
EVENTS_SKIPPED = Counter("crm_consumer_events_duplicate_total", "Redelivered events skipped", ["consumer"])
EVENTS_DEAD = Counter("crm_consumer_events_dead_lettered_total", "Poison records sent to the DLQ", ["consumer"])
# Records per applied batch = (applied + duplicate) / batches: near the batch maximum while a group works
# through a backlog, small when it keeps up with live traffic.
BATCHES = Counter("crm_consumer_batches_total", "Batches applied (one transaction each)", ["consumer"])


def applied_events_table(metadata: MetaData, name: str = "applied_events") -> Table:
    """The record of what a service has applied; add it to the service's own metadata. A second
    consumer group of the same service on the same topic keeps its own (`name`)."""
    return Table(
        name, metadata,
        Column("event_id", UUID(as_uuid=True), primary_key=True),
        Column("topic", String(200), nullable=False),
        Column("applied_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )


@dataclass
class Decoded(Generic[E]):
    event_id: uuid.UUID
    event: E
    record: ConsumerRecord[bytes, bytes]


# Applies new events inside the transaction; what it returns is handed to `after_commit`.
BatchHandler = Callable[[AsyncConnection, list[E]], Awaitable[Any]]


@dataclass
class ConsumerStats:
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    batches: int = 0
    errors: int = 0
    last_error: str | None = None


@dataclass
class IdempotentConsumer(Generic[E]):
    """One consumer group on one topic, applying batches of new events in one transaction each."""

    name: str
    engine: AsyncEngine
    applied: Table
    topic: str
    dlq_topic: str
    decode: Callable[[bytes | None], tuple[uuid.UUID, E]]
    handle: BatchHandler[E]
    consumer_factory: Callable[[], AIOKafkaConsumer]
    producer_factory: Callable[[], AIOKafkaProducer]
    max_records: int = 2000
    after_commit: Callable[[Any], Awaitable[None]] | None = None
    # A contract-valid event the business rules refuse (a date in the future, …): its reason or None.
    screen: Callable[[E, ConsumerRecord[bytes, bytes]], str | None] | None = None
    stats: ConsumerStats = field(default_factory=ConsumerStats)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def run(self) -> None:
        backoff = 0.5
        while True:
            consumer, producer = self.consumer_factory(), self.producer_factory()
            try:
                await consumer.start()
                await producer.start()
                while True:
                    batches = await consumer.getmany(timeout_ms=500, max_records=self.max_records)
                    records = [r for part in batches.values() for r in part]
                    if not records:
                        continue
                    await self.process(records, producer)
                    await consumer.commit()
                    backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Nothing of the failed batch was committed (offsets nor effects): it is read again.
                self.stats.errors += 1
                self.stats.last_error = repr(exc)
                log.warning("consumer restarting after an error", extra={"consumer": self.name, "error": repr(exc),
                                                                          "retry_in_s": backoff})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
            finally:
                await asyncio.gather(consumer.stop(), producer.stop(), return_exceptions=True)

    async def process(self, records: Sequence[ConsumerRecord[bytes, bytes]], producer: AIOKafkaProducer) -> list[E]:
        """Apply one fetched batch; returns the events that were new."""
        decoded: list[Decoded[E]] = []
        for record in records:
            try:
                event_id, event = self.decode(record.value)
            except PoisonMessage as poison:
                await self._dead(producer, record, poison.reason)
                continue
            reason = self.screen(event, record) if self.screen is not None else None
            if reason is not None:
                await self._dead(producer, record, reason)
                continue
            decoded.append(Decoded(event_id, event, record))
        return await self._apply_or_isolate(decoded, producer)

    async def _dead(self, producer: AIOKafkaProducer, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        await dead_letter(producer, self.dlq_topic, record, reason, consumer=self.name)
        self.stats.dead_lettered += 1
        EVENTS_DEAD.labels(self.name).inc()

    async def _apply_or_isolate(self, decoded: list[Decoded[E]], producer: AIOKafkaProducer) -> list[E]:
        """Apply a batch; if the handler fails while the database is fine, the fault is in the data:
        split the batch until the event that fails alone is found, dead-letter it, apply the rest.
        If the database itself is unreachable, raise: the batch is read again once it is back."""
        try:
            fresh, outcome = await self.apply(decoded)
        except Exception as exc:
            await self._database_reachable()  # raises when the fault is the database, not the data
            if len(decoded) == 1:
                ours = [f for f in traceback.extract_tb(exc.__traceback__) if "site-packages" not in f.filename]
                at = f" (at {Path(ours[-1].filename).name}:{ours[-1].lineno} in {ours[-1].name})" if ours else ""
                await self._dead(producer, decoded[0].record,
                                 f"handler refused it: {type(exc).__name__}: {exc}{at}"[:2000])
                return []
            middle = len(decoded) // 2
            return (await self._apply_or_isolate(decoded[:middle], producer)
                    + await self._apply_or_isolate(decoded[middle:], producer))
        if self.after_commit is not None and fresh:
            try:
                await self.after_commit(outcome)
            except Exception as exc:  # caches and wake-ups are best effort; the effect is committed
                log.warning("after-commit step failed", extra={"consumer": self.name, "error": repr(exc)})
        return fresh

    async def _database_reachable(self) -> None:
        from sqlalchemy import text

        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def apply(self, decoded: list[Decoded[E]]) -> tuple[list[E], Any]:
        """Skip what was applied before; apply the rest and record it, in one transaction."""
        if not decoded:
            return [], None
        outcome: Any = None
        async with self.engine.begin() as conn:
            ids = list(dict.fromkeys(d.event_id for d in decoded))
            # One array parameter, one statement (an executemany's per-row cost was measurable at 2,000 ids).
            result = await conn.execute(
                text(f"INSERT INTO {self.applied.name} (event_id, topic) SELECT unnest(CAST(:ids AS uuid[])), :topic "
                     "ON CONFLICT DO NOTHING RETURNING event_id"),
                {"ids": ids, "topic": self.topic},
            )
            new_ids = {row.event_id for row in result}
            fresh: list[E] = []
            for item in decoded:
                if item.event_id in new_ids:
                    fresh.append(item.event)
                    new_ids.discard(item.event_id)  # the same event twice in one batch applies once
            if fresh:
                outcome = await self.handle(conn, fresh)
        self.stats.batches += 1
        self.stats.applied += len(fresh)
        self.stats.duplicates += len(decoded) - len(fresh)
        EVENTS_APPLIED.labels(self.name).inc(len(fresh))
        EVENTS_SKIPPED.labels(self.name).inc(len(decoded) - len(fresh))
        BATCHES.labels(self.name).inc()
        return fresh, outcome


async def applied_count(engine: AsyncEngine, applied: Table) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(applied))).scalar() or 0)


def decoder_for(model: Any) -> Callable[[bytes | None], tuple[uuid.UUID, Any]]:
    """Decode into an `Envelope[...]` contract model and key it by its event id."""
    from crm_shared.serde import decode

    def decode_event(raw: bytes | None) -> tuple[uuid.UUID, Any]:
        event = decode(model, raw)
        return event.event_id, event

    return decode_event


MAX_AHEAD_OF_RECORD = timedelta(hours=24)


def sale_from_the_future(event: Any, record: ConsumerRecord[bytes, bytes]) -> str | None:
    """A screen for consumers of `pos.sales.v1` that run on event time: a sale dated more than 24 h
    after its record was written (typed wrong, or sent straight to Kafka past the gateway's check)
    would move every member's recency, expiry, tiers or every ordering cycle up to that day."""
    produced = datetime.fromtimestamp(record.timestamp / 1000, UTC)
    if event.payload.occurred_at > produced + MAX_AHEAD_OF_RECORD:
        return f"occurred_at {event.payload.occurred_at.isoformat()} is more than 24 h after the record was written"
    return None


def profile_with_non_finite_numbers(event: Any, _: ConsumerRecord[bytes, bytes]) -> str | None:
    """A screen for consumers of `member.profiles.v1` that learn from its numbers. The contract's float
    fields take the JSON strings "NaN" and "inf" (pydantic's lax floats); one such profile would turn
    the segmenter's online scaler and cluster centres to NaN for good (they are snapshotted)."""
    profile = event.payload
    rhythm = profile.visit_rhythm
    numbers: dict[str, float | None] = {
        "recency_days": profile.recency_days, "average_basket_size": profile.average_basket_size,
        "returns_rate": profile.returns_rate, "discount_share": profile.discount_share,
        "visit_rhythm.mean_days": rhythm.mean_days, "visit_rhythm.spread_days": rhythm.spread_days,
        "visit_rhythm.days_overdue": rhythm.days_overdue,
        **{f"categories.{name}": share for name, share in profile.categories.items()},
        **{f"brands.{name}": share for name, share in profile.brands.items()},
    }
    bad = [name for name, value in numbers.items() if value is not None and not math.isfinite(value)]
    return f"not a finite number: {', '.join(bad)}" if bad else None


def consumer_for(common: Any, engine: AsyncEngine, applied: Table, *, service: str, part: str, topic: Any, model: Any,
                 handle: BatchHandler[Any], after_commit: Callable[[Any], Awaitable[None]] | None = None,
                 screen: Callable[[Any, ConsumerRecord[bytes, bytes]], str | None] | None = None,
                 batch: int = 2000) -> IdempotentConsumer[Any]:
    """The usual wiring: group `<prefix><service>.<part>` on `topic` (a `crm_shared.topics.Topic`),
    its `.dlq` twin, decoding into the contract `model`, `common` being the service's `CommonSettings`."""
    from functools import partial

    from crm_shared.kafka import make_consumer, make_producer

    prefix = common.topic_prefix
    group = f"{prefix}{service}.{part}"
    name = topic.qualified(prefix)
    return IdempotentConsumer(
        name=group, engine=engine, applied=applied, topic=name, dlq_topic=topic.dlq(prefix),
        decode=decoder_for(model), handle=handle, after_commit=after_commit, screen=screen,
        consumer_factory=partial(make_consumer, common.kafka_bootstrap, name, group_id=group, client_id=group,
                                 max_poll_records=batch),
        producer_factory=partial(make_producer, common.kafka_bootstrap, client_id=group), max_records=batch,
    )
