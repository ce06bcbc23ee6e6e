"""Pytest plugin with the real-stack fixtures every service's tests use.

The embedded broker, PostgreSQL and Redis start once per test run; each test (or module) gets its
own topic prefix and database schema, so tests stay independent on one shared stack. Set
`CRM_TEST_KAFKA_BOOTSTRAP`, `CRM_TEST_DATABASE_URL` and `CRM_TEST_REDIS_URL` to run the same
tests against external servers instead.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from crm_shared.embedded import EmbeddedStack, free_port
from crm_shared.processes import ServiceProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
DATASETS = REPO_ROOT.parent / "shared" / "datasets"


@dataclass
class StackEndpoints:
    kafka_bootstrap: str
    database_url: str
    redis_url: str
    stack: EmbeddedStack | None

    def env(self) -> dict[str, str]:
        return {"CRM_KAFKA_BOOTSTRAP": self.kafka_bootstrap, "CRM_DATABASE_URL": self.database_url,
                "CRM_REDIS_URL": self.redis_url}


async def fresh_tables(database_url: str, schema: str, metadata: Any) -> Any:
    """A one-connection engine on `schema` whose `metadata` tables are dropped and created anew (a
    store-level test's starting point). The caller disposes of the engine."""
    from crm_shared.db import ensure_schema, make_engine

    engine = make_engine(database_url, schema=schema, pool_size=1, max_overflow=0)
    await ensure_schema(engine, schema)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
        await conn.run_sync(metadata.create_all)
    return engine


def unique_name(stem: str) -> str:
    return f"{stem}_{uuid.uuid4().hex[:8]}"


def dataset(name: str) -> Path:
    """A file from ../shared/datasets, or a skip that says the team folder is absent."""
    path = DATASETS / name
    if not path.exists():
        pytest.skip(f"{path} is absent: this check needs the team's ../shared/datasets folder")
    return path


async def read_topic(bootstrap: str, topic: str, *, expected: int, timeout: float = 30.0,
                     settle: float = 1.0) -> list[Any]:
    """Every record on a topic, read with a plain consumer (no group): waits for `expected`, then
    keeps reading for `settle` seconds so that extra (duplicate) records would be seen too."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        deadline = time.monotonic() + timeout
        while not partitions and time.monotonic() < deadline:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
            await asyncio.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(partitions or [])]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        settle_until: float | None = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            for part in batch.values():
                records.extend(part)
            if len(records) >= expected:
                settle_until = settle_until or time.monotonic() + settle
                if time.monotonic() >= settle_until:
                    break
        return records
    finally:
        await consumer.stop()


@pytest.fixture(scope="session")
def crm_stack() -> Iterator[StackEndpoints]:
    external = [os.environ.get(f"CRM_TEST_{n}") for n in ("KAFKA_BOOTSTRAP", "DATABASE_URL", "REDIS_URL")]
    if all(external):
        yield StackEndpoints(external[0], external[1], external[2], None)  # type: ignore[arg-type]
        return
    state = Path(tempfile.mkdtemp(prefix="crm-test-stack-"))
    stack = EmbeddedStack.create(state)
    stack.start()
    try:
        yield StackEndpoints(stack.kafka.bootstrap, stack.postgres.url, stack.redis.url, stack)
    finally:
        stack.discard()  # its data too (CRM_KEEP_STACK_STATE=1 keeps it)


@pytest.fixture
def topic_prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}."


@pytest.fixture
def free_tcp_port() -> int:
    return free_port()


def start_service(module: str, endpoints: StackEndpoints, log_dir: Path, *, prefix: str,
                  extra_env: dict[str, str] | None = None, partitions: int = 3) -> ServiceProcess:
    """Create the prefixed topics and start `python -m module` on a free port against the test stack."""
    from crm_shared.kafka import ensure_topics

    asyncio.run(ensure_topics(endpoints.kafka_bootstrap, prefix=prefix, partitions=partitions))
    port = free_port()
    env = {**endpoints.env(), "CRM_TOPIC_PREFIX": prefix, "CRM_ENV": "test",
           f"{module.upper()}_PORT": str(port), **(extra_env or {})}
    return ServiceProcess(module, env, port=port, log_path=log_dir / f"{module}-{port}.log").start()


def wait_until_caught_up(bootstrap: str, group: str, topic: str, timeout: float = 120) -> None:
    """Polls until consumer group `group` has committed every record of `topic`."""
    from crm_shared.kafka import consumer_lag

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if asyncio.run(consumer_lag(bootstrap, group, [topic])).get(topic) == 0:
            return
        time.sleep(0.3)
    raise AssertionError(f"{group} did not catch up with {topic} within {timeout:.0f} s")
