"""`crm_shared.kafka.send_in_batches` on the real broker: every record lands on the partition that
`producer.send` gives its key, in the order given within each partition, across two topics, with
batches filled past their size (a batch that fills up goes out and a new one takes the record)."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from crm_shared.kafka import make_producer, send_in_batches
from crm_shared.testing import StackEndpoints

pytestmark = pytest.mark.integration


async def read_all(bootstrap: str, topic: str, partitions: int, expected: int) -> dict[int, list[tuple[bytes, bytes]]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        got: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
        while sum(len(v) for v in got.values()) < expected:
            for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                got[tp.partition] += [(r.key, r.value) for r in records]
        return got
    finally:
        await consumer.stop()


async def scenario(bootstrap: str, prefix: str) -> None:
    # Two topics of different partition counts, each beside a twin that plain `send` fills as a reference.
    topics = {f"{prefix}batched-4": 4, f"{prefix}batched-3": 3}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(f"{name}{twin}", n, 1) for name, n in topics.items() for twin in ("", ".sent")])
    finally:
        await admin.close()
    # 3,000 records of 1 kB over 23 keys, one in five to the 3-partition topic: with max_batch_size
    # 16 kB, each partition fills many batches
    records = [(f"{prefix}batched-3" if i % 5 == 0 else f"{prefix}batched-4", f"member-{i % 23}".encode(),
                f"{i:06d}".encode() + b"." * 1000) for i in range(3000)]
    producer = make_producer(bootstrap, client_id="send-in-batches-test", max_batch_size=16 * 1024)
    await producer.start()
    try:
        await send_in_batches(producer, records)
        for topic, key, value in records:
            await producer.send(f"{topic}.sent", value=value, key=key)
        await producer.flush()
    finally:
        await producer.stop()

    for topic, partitions in topics.items():
        expected = sum(1 for t, _, _ in records if t == topic)
        batched = await read_all(bootstrap, topic, partitions, expected)
        sent = await read_all(bootstrap, f"{topic}.sent", partitions, expected)
        assert {p: rs for p, rs in batched.items() if rs} == {p: rs for p, rs in sent.items() if rs}, topic
        assert len({p for p, rs in batched.items() if rs}) > 1, f"{topic}: the keys did not spread over partitions"


def test_records_sent_in_batches_land_where_send_puts_them_in_order(crm_stack: StackEndpoints, topic_prefix: str) -> None:
    asyncio.run(asyncio.wait_for(scenario(crm_stack.kafka_bootstrap, topic_prefix), 120))
