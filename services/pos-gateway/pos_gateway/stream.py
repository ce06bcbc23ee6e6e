"""Kafka edge of pos-gateway: the live-stats consumer of `pos.sales.v1` (decode, apply, commit)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from crm_shared.events import Envelope, Sale, SaleRecorded
from crm_shared.kafka import dead_letter
from crm_shared.serde import PoisonMessage, decode

from pos_gateway.cache import LiveStats

log = logging.getLogger(__name__)


class LiveStatsConsumer:
    def __init__(self, consumer_factory: Any, producer_factory: Any, live_stats: LiveStats, *, dlq_topic: str,
                 name: str, max_records: int) -> None:
        self.consumer_factory = consumer_factory
        self.producer_factory = producer_factory
        self.live_stats = live_stats
        self.dlq_topic = dlq_topic
        self.name = name
        self.max_records = max_records  # per fetch, applied in one script call
        self._task: asyncio.Task[None] | None = None
        self.applied = 0
        self.dead_lettered = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="live-stats")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            consumer: AIOKafkaConsumer = self.consumer_factory()
            producer: AIOKafkaProducer = self.producer_factory()
            try:
                await consumer.start()
                await producer.start()
                while True:
                    # A yield after each partition's chunk: this may share the event loop with the HTTP
                    # API, which must not stall behind a backlog (it then asks for small fetches).
                    batches = await consumer.getmany(timeout_ms=500, max_records=self.max_records)
                    events: list[Envelope[Sale]] = []
                    for records in batches.values():
                        for record in records:
                            try:
                                events.append(decode(SaleRecorded, record.value))
                            except PoisonMessage as poison:
                                await dead_letter(producer, self.dlq_topic, record, poison.reason, consumer=self.name)
                                self.dead_lettered += 1
                        await asyncio.sleep(0)
                    self.applied += await self.live_stats.apply(events)  # one script call per fetch
                    if batches:
                        await consumer.commit()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("live stats consumer restarting", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)
            finally:
                await asyncio.gather(consumer.stop(), producer.stop(), return_exceptions=True)
