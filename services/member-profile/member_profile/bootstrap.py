"""Wires member-profile's clients, stores and handlers. Nothing connects at import time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crm_shared.auth import KeyRing
from crm_shared.consumer import IdempotentConsumer
from crm_shared.db import make_engine
from crm_shared.outbox import OutboxRelay, relay_for
from crm_shared.settings import CommonSettings
from crm_shared.web import cache_check, database_check
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from member_profile import SERVICE_NAME
from member_profile.cache import ProfileCache
from member_profile.handlers import MemberHandlers, ProfileHandlers
from member_profile.settings import MemberProfileSettings
from member_profile.store import apply_segment_changes, outbox, upsert_products
from member_profile.stream import catalog_consumer, sales_consumer, segments_consumer


@dataclass
class MemberProfileService:
    common: CommonSettings
    settings: MemberProfileSettings
    keyring: KeyRing
    engine: AsyncEngine
    redis: Redis
    handlers: ProfileHandlers
    members: MemberHandlers
    consumer: IdempotentConsumer[Any]
    catalog: IdempotentConsumer[Any]
    segments: IdempotentConsumer[Any]
    relay: OutboxRelay

    async def start(self) -> None:
        self.relay.start()
        if self.settings.consumer_enabled:
            self.catalog.start()
            self.segments.start()
            self.consumer.start()

    async def stop(self) -> None:
        await self.consumer.stop()
        await self.catalog.stop()
        await self.segments.stop()
        await self.relay.stop()
        await self.redis.aclose()
        await self.engine.dispose()

    def readiness_checks(self) -> dict[str, Any]:
        return {"database": database_check(self.engine), "cache": cache_check(self.redis)}


def build(common: CommonSettings | None = None, settings: MemberProfileSettings | None = None) -> MemberProfileService:
    common = common or CommonSettings()
    settings = settings or MemberProfileSettings()
    engine = make_engine(common.database_url, schema=settings.schema_name, pool_size=settings.db_pool_size)
    redis = Redis.from_url(common.redis_url)
    cache = ProfileCache(redis, prefix=f"{common.topic_prefix}mp:", ttl_seconds=settings.cache_ttl_seconds)
    prefix = common.topic_prefix
    relay = relay_for(common, engine, outbox, service=SERVICE_NAME, lock_id=0x4D505F52,
                      idle_poll=settings.relay_idle_poll_seconds)
    rules = settings.loyalty_rules()
    handlers = ProfileHandlers(engine, cache, rules, topic_prefix=prefix, wake_relay=relay.wake)
    members = MemberHandlers(engine, cache, rules, topic_prefix=prefix, wake_relay=relay.wake,
                             call_list_sigmas=settings.call_list_sigmas)
    consumer = sales_consumer(common, engine, handlers, batch=settings.consumer_batch)
    catalog = catalog_consumer(common, engine, upsert_products)
    segments = segments_consumer(common, engine, apply_segment_changes)
    return MemberProfileService(common, settings, KeyRing.from_settings(common.api_keys, common.env), engine, redis,
                                handlers, members, consumer, catalog, segments, relay)
