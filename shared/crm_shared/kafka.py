"""Kafka client helpers: topic creation, producers, dead-lettering and consumer lag.

The embedded broker (tansu) does not support idempotent producers (InitProducerId), so every
producer here is plain at-least-once; consumers dedupe by event id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.partitioner import DefaultPartitioner

from crm_shared.topics import ALL_TOPICS, Topic

log = logging.getLogger(__name__)


MAX_COMPACTION_LAG_MS = 24 * 3600 * 1000


def new_topics(topics: Iterable[Topic], prefix: str, partitions: int, replication: int) -> list[NewTopic]:
    wanted: list[NewTopic] = []
    for topic in topics:
        # A compacted topic keeps a key's old values until the cleaner runs; the lag bound makes an
        # erased member's earlier records (consent topic: home store, MM-DD birthday) go within a day.
        config = {"cleanup.policy": "compact", "max.compaction.lag.ms": str(MAX_COMPACTION_LAG_MS)} if topic.compacted else {}
        wanted.append(NewTopic(topic.qualified(prefix), partitions, replication, topic_configs=config))
        if topic.has_dlq:
            wanted.append(NewTopic(topic.dlq(prefix), partitions, replication))
    return wanted


async def ensure_topics(bootstrap: str, *, prefix: str = "", partitions: int = 6, replication: int = 1,
                        topics: Sequence[Topic] = ALL_TOPICS, timeout: float = 30.0) -> list[str]:
    """Create every topic (and its DLQ twin) that does not exist yet; returns the names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in new_topics(topics, prefix, partitions, replication) if t.name not in existing]
        created: list[str] = []
        for topic in missing:
            try:
                await admin.create_topics([topic])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
            except KafkaError as exc:
                # Some brokers (tansu) ignore or reject topic configs; a plain topic still serves.
                if topic.topic_configs:
                    await admin.create_topics([NewTopic(topic.name, topic.num_partitions, topic.replication_factor)])
                    created.append(topic.name)
                else:
                    raise exc
        return created
    finally:
        await admin.close()


def make_producer(bootstrap: str, *, client_id: str, linger_ms: int = 5, **overrides: Any) -> AIOKafkaProducer:
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": client_id,
        "acks": "all",
        "enable_idempotence": False,
        "linger_ms": linger_ms,
        "max_batch_size": 256 * 1024,
        "request_timeout_ms": 10_000,
        "retry_backoff_ms": 200,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


async def send_in_batches(producer: AIOKafkaProducer, records: Iterable[tuple[str, bytes | None, bytes]]) -> None:
    """Send `(topic, key, value)` records and wait until the broker has them all, each record on the
    partition `producer.send` would pick (the default partitioner: murmur2 of the key; a keyless record
    on any partition), in the order given within each partition.

    Records are packed into one batch per topic and partition (`create_batch`/`send_batch`) instead of
    a `send` each: a relay pass of 2,500 records took a third of the CPU time (0.12-0.15 against
    0.34-0.38 s for 25,000 records of 600 bytes, tansu, 6 partitions).
    """
    partitioner = DefaultPartitioner()
    partitions: dict[str, list[int]] = {}
    open_batches: dict[tuple[str, int], Any] = {}
    sent: list[asyncio.Future[Any]] = []
    for topic, key, value in records:
        if topic not in partitions:
            partitions[topic] = sorted(await producer.partitions_for(topic))
        all_partitions = partitions[topic]
        partition = partitioner(key, all_partitions, all_partitions)
        batch = open_batches.get((topic, partition))
        if batch is None:
            batch = open_batches[(topic, partition)] = producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None) is None:  # full: off it goes, a new one takes the record
            sent.append(await producer.send_batch(batch, topic, partition=partition))
            batch = open_batches[(topic, partition)] = producer.create_batch()
            batch.append(key=key, value=value, timestamp=None)  # a batch's first record always fits
    for (topic, partition), batch in open_batches.items():
        sent.append(await producer.send_batch(batch, topic, partition=partition))
    await asyncio.gather(*sent)


def make_consumer(bootstrap: str, *topics: str, group_id: str, client_id: str, **overrides: Any) -> AIOKafkaConsumer:
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "group_id": group_id,
        "client_id": client_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": 2000,
        # How long the broker may hold a fetch that found nothing new (aiokafka's default is 500 ms). With
        # the default, the notifier's sale -> offer p99 at 1,000 sales/s was 297 ms; with 100 ms, 141 ms
        # (bench/offer_latency.py, quiet machine, same tree): records that arrived while a fetch was held
        # waited for it. Idle cost: about ten empty fetches a second per consumer.
        "fetch_max_wait_ms": 100,
        "isolation_level": "read_uncommitted",
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


async def dead_letter(producer: AIOKafkaProducer, dlq_topic: str, record: ConsumerRecord[bytes, bytes], reason: str,
                      *, consumer: str) -> None:
    """Send a poison record to its dead-letter topic, untouched, with why and where it came from."""
    headers = list(record.headers or ())
    headers += [
        ("dlq.reason", reason.encode("utf-8")[:4000]),
        ("dlq.consumer", consumer.encode()),
        ("dlq.source", f"{record.topic}/{record.partition}/{record.offset}".encode()),
        ("dlq.at_ms", str(int(time.time() * 1000)).encode()),
    ]
    await producer.send_and_wait(dlq_topic, value=record.value, key=record.key, headers=headers)
    log.warning("dead-lettered record", extra={"topic": record.topic, "partition": record.partition,
                                                "offset": record.offset, "reason": reason, "dlq": dlq_topic})


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """The topic's partitions as the consumer's cluster metadata knows them, refreshed once when it does
    not know the topic yet; none for a topic the broker does not have."""
    partitions = consumer.partitions_for_topic(topic)
    if partitions is None:
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic) or set()
    return [TopicPartition(topic, p) for p in sorted(partitions)]


async def consumer_lag(bootstrap: str, group_id: str, topics: Sequence[str], timeout: float = 10.0) -> dict[str, int]:
    """Messages not yet committed by a consumer group, per topic.

    End offsets come from the high watermarks of real fetches: the embedded broker (tansu) answers
    ListOffsets with the last batch's offset rather than the log end, which would hide lag.
    """
    group = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False)
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await group.start()
    await reader.start()
    try:
        committed: dict[TopicPartition, int] = {}
        for topic in topics:
            for tp in await topic_partitions(group, topic):
                committed[tp] = (await group.committed(tp)) or 0
        if not committed:
            return {}
        reader.assign(list(committed))
        for tp, offset in committed.items():
            reader.seek(tp, offset)
        deadline = time.monotonic() + timeout
        while any(reader.highwater(tp) is None for tp in committed) and time.monotonic() < deadline:
            await reader.getmany(timeout_ms=200, max_records=1)
        lags: dict[str, int] = {}
        for tp, offset in committed.items():
            end = reader.highwater(tp)
            if end is None:
                raise TimeoutError(f"no high watermark for {tp.topic}/{tp.partition}")
            lags[tp.topic] = lags.get(tp.topic, 0) + max(0, end - offset)
        return lags
    finally:
        await asyncio.gather(group.stop(), reader.stop(), return_exceptions=True)


class LagWatch:
    """Consumer lag of many groups, read again and again over two clients that stay open: a consumer
    per group for its committed offsets and a group-less reader for the log ends.

    `consumer_lag` opens two clients and fetches a batch for every call, fine for a test that asks once;
    a bench asking every second for 15 groups opened 30 connections a second and fetched up to a
    megabyte per group each time, on the broker it was measuring. The reader here is assigned every
    partition of the watched topics and reads on from the log end, so it fetches each new record once,
    and each fetch answer brings the partition's high watermark (the embedded broker answers ListOffsets with
    the last batch's offset rather than the log end, which would hide lag)."""

    def __init__(self, bootstrap: str, groups: dict[str, Sequence[str]], *, fetch_wait_ms: int = 100) -> None:
        self.bootstrap = bootstrap
        self.groups = {group: list(topics) for group, topics in groups.items()}
        self.fetch_wait_ms = fetch_wait_ms
        self._committers: dict[str, AIOKafkaConsumer] = {}
        self._reader: AIOKafkaConsumer | None = None
        self._partitions: dict[str, list[TopicPartition]] = {}

    async def start(self) -> LagWatch:
        """Opens the clients (on the running loop, which then serves every `read`)."""
        # One group-bound consumer per group, never subscribed (it joins nothing): it asks the group's
        # coordinator for committed offsets (the embedded broker does not answer the admin client's ask).
        self._committers = {group: AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=group,
                                                    enable_auto_commit=False, client_id="crm-lag-watch")
                            for group in self.groups}
        self._reader = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                        client_id="crm-lag-watch", fetch_max_wait_ms=self.fetch_wait_ms,
                                        max_partition_fetch_bytes=64 * 1024)
        await asyncio.gather(self._reader.start(), *(c.start() for c in self._committers.values()))
        topics = sorted({t for topics in self.groups.values() for t in topics})
        for topic in topics:
            self._partitions[topic] = await topic_partitions(self._reader, topic)
        assigned = [tp for tps in self._partitions.values() for tp in tps]
        self._reader.assign(assigned)
        if assigned:
            await self._reader.seek_to_end(*assigned)
        return self

    async def stop(self) -> None:
        clients = [*self._committers.values(), *([self._reader] if self._reader is not None else [])]
        await asyncio.gather(*(c.stop() for c in clients), return_exceptions=True)

    async def ends(self, timeout: float = 10.0) -> dict[TopicPartition, int]:
        """Each partition's log end as the broker saw it after this call began: from the answer to a
        fetch sent after an answer that arrived after the call began (the first answer may be to a
        fetch sent before; the reader sends a partition's next fetch once its last answer is in)."""
        reader = self._reader
        if reader is None:
            raise RuntimeError("LagWatch.start() first")
        asked = time.time() * 1000  # the reader stamps its fetch answers in wall-clock ms
        deadline = time.monotonic() + timeout
        partitions = [tp for tps in self._partitions.values() for tp in tps]
        first: dict[TopicPartition, float] = {}
        while True:
            await reader.getmany(timeout_ms=20)  # drained and dropped: only the answers' ends count
            fresh = 0
            for tp in partitions:
                stamp = reader.last_poll_timestamp(tp)
                if stamp is None or stamp < asked:
                    continue
                if tp not in first:
                    first[tp] = stamp
                elif stamp > first[tp]:
                    fresh += 1
            if fresh == len(partitions):
                return {tp: reader.highwater(tp) for tp in partitions}
            if time.monotonic() > deadline:
                raise TimeoutError(f"no fresh log end for {len(partitions) - fresh} of {len(partitions)} partitions")

    async def read(self) -> dict[str, int]:
        """Each group's total lag (log end minus committed offset, over its topics); -1 where unknown."""
        ends = await self.ends()
        out: dict[str, int] = {}
        for group, topics in self.groups.items():
            partitions = [tp for topic in topics for tp in self._partitions.get(topic, ())]
            try:
                committed = await asyncio.gather(*(self._committers[group].committed(tp) for tp in partitions))
            except KafkaError:  # the group's coordinator cannot answer now: unknown, not 0
                out[group] = -1
                continue
            out[group] = sum(max(0, ends[tp] - (offset or 0)) for tp, offset in zip(partitions, committed, strict=True))
        return out


async def wait_for_broker(bootstrap: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
        try:
            await admin.start()
            await admin.list_topics()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)
        finally:
            await admin.close()
