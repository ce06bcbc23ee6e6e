"""`crm_shared.kafka.LagWatch` on the real broker: the same lag as `consumer_lag` (two fresh clients per
ask), read again and again over clients that stay open; it sees records produced after it started, and
a group's commit bring its lag down."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from crm_shared.kafka import LagWatch, consumer_lag, make_producer
from crm_shared.testing import StackEndpoints

pytestmark = pytest.mark.integration


async def produce(bootstrap: str, topic: str, n: int, start: int = 0) -> None:
    producer = make_producer(bootstrap, client_id="lag-watch-test")
    await producer.start()
    try:
        for i in range(start, start + n):
            await producer.send(topic, f"record {i}".encode(), key=f"k{i % 17}".encode())
        await producer.flush()
    finally:
        await producer.stop()


async def consume_and_commit(bootstrap: str, group: str, topic: str, at_least: int) -> int:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        read = 0
        while read < at_least:
            batch = await consumer.getmany(timeout_ms=1000, max_records=at_least - read)
            read += sum(len(records) for records in batch.values())
        await consumer.commit()
        return read
    finally:
        await consumer.stop()


async def scenario(bootstrap: str, prefix: str) -> None:
    busy, quiet = f"{prefix}busy", f"{prefix}quiet"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(busy, 3, 1), NewTopic(quiet, 2, 1)])
    finally:
        await admin.close()
    await produce(bootstrap, busy, 900)
    await produce(bootstrap, quiet, 40)
    half, none, all_of_it = f"{prefix}half", f"{prefix}none", f"{prefix}all"
    assert await consume_and_commit(bootstrap, half, busy, 450) == 450
    assert await consume_and_commit(bootstrap, all_of_it, quiet, 40) == 40
    groups = {half: [busy], none: [busy, quiet], all_of_it: [quiet]}

    watch = await LagWatch(bootstrap, groups).start()
    try:
        first = await watch.read()
        expected = {group: sum((await consumer_lag(bootstrap, group, topics)).values()) for group, topics in groups.items()}
        assert first == expected == {half: 450, none: 940, all_of_it: 0}, (first, expected)
        assert await watch.read() == first  # nothing moved: asked again over the same clients, the same answer

        await produce(bootstrap, busy, 300, start=900)  # after the watch started: it must see them
        assert await watch.read() == {half: 750, none: 1240, all_of_it: 0}
        assert await consume_and_commit(bootstrap, half, busy, 750) == 750
        assert await watch.read() == {half: 0, none: 1240, all_of_it: 0}
    finally:
        await watch.stop()


def test_lag_watch_answers_as_consumer_lag_does_and_follows_produce_and_commit(
        crm_stack: StackEndpoints, topic_prefix: str) -> None:
    asyncio.run(asyncio.wait_for(scenario(crm_stack.kafka_bootstrap, topic_prefix), 120))
