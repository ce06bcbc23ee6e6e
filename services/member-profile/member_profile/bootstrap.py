"""Wires member-profile's clients, stores and handlers. Nothing connects at import time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crm_shared.auth import KeyRing
from crm_shared.consumer import IdempotentConsumer
from crm_shared.db import make_engine
from crm_shared.settings import CommonSettings
from crm_shared.web import cache_check, database_check
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from member_profile.cache import ProfileCache
from member_profile.handlers import ProfileHandlers
from member_profile.settings import MemberProfileSettings
from member_profile.stream import sales_consumer


@dataclass
class MemberProfileService:
    common: CommonSettings
    settings: MemberProfileSettings
    keyring: KeyRing
    engine: AsyncEngine
    redis: Redis
    handlers: ProfileHandlers
    consumer: IdempotentConsumer[Any]

    async def start(self) -> None:
        if self.settings.consumer_enabled:
            self.consumer.start()

    async def stop(self) -> None:
        await self.consumer.stop()
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
    handlers = ProfileHandlers(engine, cache)
    consumer = sales_consumer(common, engine, handlers, batch=settings.consumer_batch)
    return MemberProfileService(common, settings, KeyRing.from_settings(common.api_keys, common.env), engine, redis,
                                handlers, consumer)
