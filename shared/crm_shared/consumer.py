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
import time
import traceback
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from prometheus_client import Counter, Gauge
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
HELD = Gauge("crm_consumer_records_held", "Records read but held back until the group's other partitions catch up "
             "in event time", ["consumer"])
UNALIGNED = Counter("crm_consumer_unaligned_releases_total", "Held records handed on out of event-time order after "
                    "waiting too long for a partition that was behind", ["consumer"])


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


class EventTimeAligner(Generic[E]):
    """Hands a group's records on in event-time order across its partitions (pure: no I/O).

    Why: a consumer's event-time clock is the latest event time it has applied. A group that works
    through a backlog gets whole fetches of one partition before the next (aiokafka drains the
    fetched partitions one by one): the clock ran to the end of partition 0's backlog while the other
    partitions' older events were still unread, and those were then decided at a clock up to months
    late. The segmenter, replaying the Online Retail year from six partitions, skipped the weekly
    reviews of five members in six that way: 14,106 value-tier changes against 30,544 from one
    partition. Here records go on in the order of a merge of the partitions read to their end: by event
    time, ties by partition number, each partition's own order kept whatever its event times. A held
    record goes only when no partition that is behind (records unread on the broker, none held here) can
    still bring one that comes before it in that order: its (event time, partition) is below the
    (latest event time read, partition) of every partition behind. A partition whose held records run
    out during a release while it has records unread is behind from that record on: the merge stops
    there too. A group that keeps up with live traffic has a partition behind only between a fetch and
    its hand-out, and holds little back.

    `add` what was read (decoded), `release` what may go on, told which partitions have records `unread`
    on the broker (the caller asks the consumer). If partitions stay behind for `patience_s` while
    records are held (a broker that stops serving a partition), the held records go on in merge order
    anyway, counted in `crm_consumer_unaligned_releases_total`: better late order than a stalled group."""

    def __init__(self, event_time: Callable[[E], datetime], *, patience_s: float = 5.0) -> None:
        self.event_time = event_time
        self.patience_s = patience_s
        self.held: dict[TopicPartition, deque[tuple[datetime, Decoded[E]]]] = {}
        self.latest: dict[TopicPartition, datetime] = {}  # the latest event time read from each partition
        self._waiting_since: float | None = None

    def add(self, items: Sequence[Decoded[E]]) -> None:
        for item in items:
            tp = TopicPartition(item.record.topic, item.record.partition)
            at = self.event_time(item.event)
            self.held.setdefault(tp, deque()).append((at, item))
            if tp not in self.latest or at > self.latest[tp]:
                self.latest[tp] = at

    def count(self, tp: TopicPartition | None = None) -> int:
        if tp is not None:
            return len(self.held.get(tp, ()))
        return sum(len(queue) for queue in self.held.values())

    def first_held_offset(self, tp: TopicPartition) -> int | None:
        queue = self.held.get(tp)
        return queue[0][1].record.offset if queue else None

    def keep_only(self, assigned: Collection[TopicPartition]) -> None:
        """Forget partitions no longer assigned (their uncommitted records go to their new owner)."""
        for tp in [tp for tp in self.held if tp not in assigned]:
            del self.held[tp]
        for tp in [tp for tp in self.latest if tp not in assigned]:
            del self.latest[tp]

    def release(self, unread: Collection[TopicPartition], limit: int, now: float) -> tuple[list[Decoded[E]], bool]:
        """Up to `limit` held records in merge order, each before what any partition with records
        `unread` may still bring; and whether they went on out of order (patience ran out)."""
        out = self._merge(limit, unread)
        if out or not self.count():
            self._waiting_since = None
            return out, False
        if self._waiting_since is None:
            self._waiting_since = now
        if now - self._waiting_since < self.patience_s:
            return out, False
        self._waiting_since = None
        return self._merge(limit, None), True

    def behind(self, unread: Collection[TopicPartition]) -> list[TopicPartition]:
        """The partitions that hold the merge back: records unread, none held."""
        return [tp for tp in unread if not self.count(tp)]

    def _merge(self, limit: int, unread: Collection[TopicPartition] | None) -> list[Decoded[E]]:
        """The first held head by (event time, partition) first, while it comes before the bound set by
        the partitions behind (None: no bound). A partition whose queue runs dry here with records unread
        joins them: what it brings next comes after its latest record read."""
        out: list[Decoded[E]] = []
        bound: tuple[datetime, int] | None = None
        if unread is not None:
            behind = self.behind(unread)
            if any(tp not in self.latest for tp in behind):
                return out  # a partition behind has shown nothing yet: anything held could come after it
            bound = min(((self.latest[tp], tp.partition) for tp in behind), default=None)
            unread = set(unread)

        def head(queue: deque[tuple[datetime, Decoded[E]]]) -> tuple[datetime, int]:
            return queue[0][0], queue[0][1].record.partition

        queues = {tp: queue for tp, queue in self.held.items() if queue}
        while queues and len(out) < limit:
            tp = min(queues, key=lambda tp: head(queues[tp]))
            first = queues[tp]
            if bound is not None and head(first) >= bound:
                break
            out.append(first.popleft()[1])
            if not first:
                del queues[tp]
                if unread is not None and tp in unread:  # dry, with more on the broker: behind from here
                    dry = (self.latest[tp], tp.partition)
                    bound = dry if bound is None else min(bound, dry)
        return out


def unread(consumer: AIOKafkaConsumer, tp: TopicPartition, position: int) -> bool:
    """The broker holds records of `tp` from `position` on (or has not said yet how many it holds)."""
    highwater = consumer.highwater(tp)
    return highwater is None or position < highwater


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
    # Set for a group that decides on event time: records go to `handle` in event-time order across
    # partitions (`EventTimeAligner`), not in the order fetches happen to come back.
    event_time: Callable[[E], datetime] | None = None
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
                if self.event_time is not None:
                    await self._run_aligned(consumer, producer, EventTimeAligner(self.event_time))
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

    async def _run_aligned(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer,
                           aligner: EventTimeAligner[E]) -> None:
        """The loop of a group on event time: read, hold, hand on in event-time order, and commit per
        partition up to (not including) the first record still held."""
        committed: dict[TopicPartition, int] = {}
        paused: set[TopicPartition] = set()
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=self.max_records)
            records = [r for part in batches.values() for r in part]
            if records:
                aligner.add(await self._decode(records, producer))
            assigned = consumer.assignment()
            aligner.keep_only(assigned)
            # where each partition's next fetch starts (only getmany moves it): for "behind" and the commit
            positions = {tp: await consumer.position(tp) for tp in assigned}
            not_read = [tp for tp in assigned if unread(consumer, tp, positions[tp])]
            behind = aligner.behind(not_read)
            batch, unaligned = aligner.release(not_read, self.max_records, time.monotonic())
            if unaligned:
                UNALIGNED.labels(self.name).inc()
                log.warning("held records handed on out of event-time order: partitions stayed behind",
                            extra={"consumer": self.name, "behind": sorted(str(tp) for tp in behind)})
            if batch:
                await self._apply_or_isolate(batch, producer)
            HELD.labels(self.name).set(aligner.count())
            offsets: dict[TopicPartition, int] = {}
            for tp in assigned:
                first = aligner.first_held_offset(tp)
                offset = first if first is not None else positions[tp]
                if committed.get(tp) != offset:
                    offsets[tp] = offset
            if offsets:
                await consumer.commit(offsets)
                committed.update(offsets)
            # A partition that holds its share of a batch stops being fetched until the others catch up:
            # what is held stays about one batch in all (decoded sales are ~10x their bytes).
            share = max(1, self.max_records // max(1, len(assigned)))
            full = {tp for tp in assigned if aligner.count(tp) >= share}
            if full - paused:
                consumer.pause(*(full - paused))
            if (paused - full) & assigned:
                consumer.resume(*((paused - full) & assigned))
            paused = full

    async def process(self, records: Sequence[ConsumerRecord[bytes, bytes]], producer: AIOKafkaProducer) -> list[E]:
        """Apply one fetched batch; returns the events that were new."""
        return await self._apply_or_isolate(await self._decode(records, producer), producer)

    async def _decode(self, records: Sequence[ConsumerRecord[bytes, bytes]], producer: AIOKafkaProducer
                      ) -> list[Decoded[E]]:
        """The records as contract events; what cannot be decoded or is screened out goes to the DLQ."""
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
        return decoded

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


def envelope_time(event: Any) -> datetime:
    """An envelope's event time."""
    occurred_at: datetime = event.occurred_at
    return occurred_at


def consumer_for(common: Any, engine: AsyncEngine, applied: Table, *, service: str, part: str, topic: Any, model: Any,
                 handle: BatchHandler[Any], after_commit: Callable[[Any], Awaitable[None]] | None = None,
                 screen: Callable[[Any, ConsumerRecord[bytes, bytes]], str | None] | None = None,
                 batch: int = 2000, on_event_time: bool = False) -> IdempotentConsumer[Any]:
    """The usual wiring: group `<prefix><service>.<part>` on `topic` (a `crm_shared.topics.Topic`),
    its `.dlq` twin, decoding into the contract `model`, `common` being the service's `CommonSettings`.
    `on_event_time`: the handler decides on event time, so it gets the events in event-time order across
    partitions (each envelope's `occurred_at`; `EventTimeAligner`)."""
    from functools import partial

    from crm_shared.kafka import make_consumer, make_producer

    prefix = common.topic_prefix
    group = f"{prefix}{service}.{part}"
    name = topic.qualified(prefix)
    return IdempotentConsumer(
        name=group, engine=engine, applied=applied, topic=name, dlq_topic=topic.dlq(prefix),
        decode=decoder_for(model), handle=handle, after_commit=after_commit, screen=screen,
        event_time=envelope_time if on_event_time else None,
        consumer_factory=partial(make_consumer, common.kafka_bootstrap, name, group_id=group, client_id=group,
                                 max_poll_records=batch),
        producer_factory=partial(make_producer, common.kafka_bootstrap, client_id=group), max_records=batch,
    )
