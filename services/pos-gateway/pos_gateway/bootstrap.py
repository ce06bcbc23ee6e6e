"""Wires pos-gateway's clients, stores and handlers. Nothing connects at import time."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

from crm_shared.auth import KeyRing
from crm_shared.db import make_engine
from crm_shared.kafka import ensure_topics, make_consumer, make_producer
from crm_shared.outbox import OutboxRelay
from crm_shared.settings import CommonSettings
from crm_shared.topics import BROKER_SENTINEL, POS_SALES
from crm_shared.web import cache_check, database_check
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from pos_gateway import SERVICE_NAME
from pos_gateway.cache import LiveStats
from pos_gateway.handlers import GatewayHandlers
from pos_gateway.settings import GatewaySettings
from pos_gateway.store import RELAY_STALE_AFTER, SaleWriter, beat, outbox, relay_heartbeat_age
from pos_gateway.stream import LiveStatsConsumer

RELAY_LOCK = 0x505F5341  # advisory lock: one relay publishes at a time across every gateway replica


@dataclass
class Background:
    """The gateway's work besides HTTP: the outbox relay and the live-stats consumer."""

    settings: GatewaySettings
    relay: OutboxRelay
    live_stats_consumer: LiveStatsConsumer

    async def start(self) -> None:
        if self.settings.relay_enabled:
            self.relay.start()
        if self.settings.live_stats_enabled:
            self.live_stats_consumer.start()

    async def stop(self) -> None:
        await self.live_stats_consumer.stop()
        await self.relay.stop()


@dataclass
class Gateway:
    common: CommonSettings
    settings: GatewaySettings
    keyring: KeyRing
    engine: AsyncEngine
    redis: Redis
    writer: SaleWriter
    live_stats: LiveStats
    handlers: GatewayHandlers
    background: Background | None  # None: it runs in its own process (`python -m pos_gateway background`)
    started: bool = field(default=False)

    async def start(self) -> None:
        if self.background is not None:
            await self.background.start()
        self.started = True

    async def stop(self) -> None:
        if self.background is not None:
            await self.background.stop()
        await self.writer.stop()
        await self.redis.aclose()
        await self.engine.dispose()

    def readiness_checks(self) -> dict[str, Any]:
        background = self.background

        async def broker() -> None:
            if not self.settings.relay_enabled:
                return
            if background is not None:
                healthy = background.relay.healthy()
            else:  # the relay runs in another process: its heartbeat row says how it is doing
                age = await relay_heartbeat_age(self.engine)
                healthy = age is not None and age < RELAY_STALE_AFTER
            if not healthy:
                raise ConnectionError("outbox relay cannot reach the broker (sales are safe in the ledger)")

        return {"database": database_check(self.engine), "cache": cache_check(self.redis), "broker": broker}


def make_gateway_engine(common: CommonSettings, settings: GatewaySettings) -> AsyncEngine:
    # No pre-ping: it costs a round trip per group commit; a dead connection fails its batch (503, the
    # terminal retries) and the pool replaces it.
    return make_engine(common.database_url, schema=settings.schema_name, pool_size=settings.db_pool_size,
                       pre_ping=False)


def live_stats_store(common: CommonSettings, redis: Redis) -> LiveStats:
    return LiveStats(redis, prefix=f"{common.topic_prefix}pg:live:")


def build_background(common: CommonSettings, settings: GatewaySettings, engine: AsyncEngine,
                     redis: Redis) -> Background:
    prefix = common.topic_prefix
    relay_id = f"{socket.gethostname()}:{os.getpid()}"
    relay = OutboxRelay(
        engine, outbox, partial(make_producer, common.kafka_bootstrap, client_id=f"{SERVICE_NAME}-relay"),
        lock_id=RELAY_LOCK, batch_size=settings.relay_batch_size, idle_poll=settings.relay_idle_poll_seconds,
        retention_hours=settings.outbox_retention_hours,
        ensure_topics=partial(ensure_topics, common.kafka_bootstrap, prefix=prefix,
                              partitions=common.topic_partitions, replication=common.topic_replication),
        sentinel_topic=BROKER_SENTINEL.qualified(prefix),
        wake_channel=f"{settings.schema_name}.outbox",  # the channel the outbox trigger notifies
        heartbeat=partial(beat, engine, relay_id, retention_hours=settings.outbox_retention_hours),
        busy_linger=0.05,  # under load rows gather a moment between passes; from idle it publishes at once
    )
    group = f"{prefix}{SERVICE_NAME}.live-stats"
    consumer = LiveStatsConsumer(
        partial(make_consumer, common.kafka_bootstrap, POS_SALES.qualified(prefix), group_id=group, client_id=group),
        partial(make_producer, common.kafka_bootstrap, client_id=group),
        live_stats_store(common, redis), dlq_topic=POS_SALES.dlq(prefix), name=group,
        # In its own process a fetch can be large: fewer script calls and commits, and a backlog
        # (after a restart) lands in few steps. Sharing the API's event loop, it must stay small.
        max_records=250 if settings.background == "inline" else 2000,
    )
    return Background(settings, relay, consumer)


def build(common: CommonSettings | None = None, settings: GatewaySettings | None = None) -> Gateway:
    """The HTTP API's side; with `background="inline"` it also runs the relay and the live stats."""
    common = common or CommonSettings()
    settings = settings or GatewaySettings()
    keyring = KeyRing.from_settings(common.api_keys, common.env)
    engine = make_gateway_engine(common, settings)
    redis = Redis.from_url(common.redis_url)
    background = build_background(common, settings, engine, redis) if settings.background == "inline" else None
    writer = SaleWriter(engine, sales_topic=POS_SALES.qualified(common.topic_prefix), max_batch=settings.writer_max_batch,
                        concurrency=settings.writer_concurrency,
                        on_commit=background.relay.wake if background is not None else None)
    live_stats = live_stats_store(common, redis)
    handlers = GatewayHandlers(writer, engine, live_stats, max_future=timedelta(hours=settings.max_future_hours))
    return Gateway(common, settings, keyring, engine, redis, writer, live_stats, handlers, background)
