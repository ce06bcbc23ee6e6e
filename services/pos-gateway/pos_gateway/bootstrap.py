"""Wires pos-gateway's clients, stores and handlers. Nothing connects at import time."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

from crm_shared.auth import KeyRing
from crm_shared.db import make_engine
from crm_shared.kafka import ensure_topics, make_consumer, make_producer
from crm_shared.settings import CommonSettings
from crm_shared.topics import BROKER_SENTINEL, POS_SALES
from crm_shared.web import cache_check, database_check
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from pos_gateway import SERVICE_NAME
from pos_gateway.cache import LiveStats
from pos_gateway.handlers import GatewayHandlers
from pos_gateway.settings import GatewaySettings
from pos_gateway.store import OutboxRelay, SaleWriter
from pos_gateway.stream import LiveStatsConsumer


@dataclass
class Gateway:
    common: CommonSettings
    settings: GatewaySettings
    keyring: KeyRing
    engine: AsyncEngine
    redis: Redis
    writer: SaleWriter
    relay: OutboxRelay
    live_stats: LiveStats
    live_stats_consumer: LiveStatsConsumer
    handlers: GatewayHandlers
    started: bool = field(default=False)

    async def start(self) -> None:
        self.writer.start()
        if self.settings.relay_enabled:
            self.relay.start()
        if self.settings.live_stats_enabled:
            self.live_stats_consumer.start()
        self.started = True

    async def stop(self) -> None:
        await self.live_stats_consumer.stop()
        await self.relay.stop()
        await self.writer.stop()
        await self.redis.aclose()
        await self.engine.dispose()

    def readiness_checks(self) -> dict[str, Any]:
        async def broker() -> None:
            if self.settings.relay_enabled and not self.relay.healthy():
                raise ConnectionError("outbox relay cannot reach the broker (sales are safe in the ledger)")

        return {"database": database_check(self.engine), "cache": cache_check(self.redis), "broker": broker}


def build(common: CommonSettings | None = None, settings: GatewaySettings | None = None) -> Gateway:
    common = common or CommonSettings()
    settings = settings or GatewaySettings()
    keyring = KeyRing.from_settings(common.api_keys, common.env)
    # No pre-ping: it costs a round trip per group commit; a dead connection fails its batch (503, the
    # terminal retries) and the pool replaces it.
    engine = make_engine(common.database_url, schema=settings.schema_name, pool_size=settings.db_pool_size,
                         pre_ping=False)
    redis = Redis.from_url(common.redis_url)
    prefix = common.topic_prefix
    sales_topic = POS_SALES.qualified(prefix)
    producer_factory = partial(make_producer, common.kafka_bootstrap, client_id=f"{SERVICE_NAME}-relay")
    relay = OutboxRelay(
        engine, producer_factory, batch_size=settings.relay_batch_size, idle_poll=settings.relay_idle_poll_seconds,
        retention_hours=settings.outbox_retention_hours,
        ensure_topics=partial(ensure_topics, common.kafka_bootstrap, prefix=prefix,
                              partitions=common.topic_partitions, replication=common.topic_replication),
        sentinel_topic=BROKER_SENTINEL.qualified(prefix),
    )
    writer = SaleWriter(engine, sales_topic=sales_topic, max_batch=settings.writer_max_batch, on_commit=relay.wake)
    live_stats = LiveStats(redis, prefix=f"{prefix}pg:live:")
    group = f"{prefix}{SERVICE_NAME}.live-stats"
    consumer = LiveStatsConsumer(
        partial(make_consumer, common.kafka_bootstrap, sales_topic, group_id=group, client_id=group),
        partial(make_producer, common.kafka_bootstrap, client_id=group),
        live_stats, dlq_topic=POS_SALES.dlq(prefix), name=group,
    )
    handlers = GatewayHandlers(writer, engine, live_stats, max_future=timedelta(hours=settings.max_future_hours))
    return Gateway(common, settings, keyring, engine, redis, writer, relay, live_stats, consumer, handlers)
