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
    batched, single, other = f"{prefix}batched", f"{prefix}single", f"{prefix}other"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(batched, 4, 1), NewTopic(single, 4, 1), NewTopic(other, 3, 1)])
    finally:
        await admin.close()
    # 3,000 records of 1 kB over 23 keys: with max_batch_size 16 kB, each partition fills many batches
    records = [(f"member-{i % 23}".encode(), f"{i:06d}".encode() + b"." * 1000) for i in range(3000)]
    producer = make_producer(bootstrap, client_id="send-in-batches-test", max_batch_size=16 * 1024)
    await producer.start()
    try:
        await send_in_batches(producer, [(batched if i % 5 else other, k, v)
                                         for i, (k, v) in enumerate(records)])
        for key, value in records:
            await producer.send(single, value=value, key=key)
        await producer.flush()
    finally:
        await producer.stop()

    other_count = sum(1 for i in range(len(records)) if i % 5 == 0)
    in_batched = await read_all(bootstrap, batched, 4, len(records) - other_count)
    by_send = await read_all(bootstrap, single, 4, len(records))
    expected = {p: [r for r in rs if int(r[1][:6]) % 5] for p, rs in by_send.items()}
    assert {p: rs for p, rs in in_batched.items() if rs} == {p: rs for p, rs in expected.items() if rs}
    assert len({p for p, rs in in_batched.items() if rs}) > 1  # the keys did spread over partitions
    in_other = await read_all(bootstrap, other, 3, other_count)
    assert sorted(int(v[:6]) for rs in in_other.values() for _, v in rs) == list(range(0, len(records), 5))


def test_records_sent_in_batches_land_where_send_puts_them_in_order(crm_stack: StackEndpoints, topic_prefix: str) -> None:
    asyncio.run(asyncio.wait_for(scenario(crm_stack.kafka_bootstrap, topic_prefix), 120))
