"""Wires replenishment's clients, stores and handlers. Nothing connects at import time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crm_shared.auth import KeyRing
from crm_shared.consumer import IdempotentConsumer
from crm_shared.db import make_engine
from crm_shared.outbox import OutboxRelay, relay_for
from crm_shared.settings import CommonSettings
from crm_shared.web import database_check
from sqlalchemy.ext.asyncio import AsyncEngine

from replenishment import SERVICE_NAME
from replenishment.handlers import SupplyHandlers
from replenishment.settings import ReplenishmentSettings
from replenishment.store import outbox
from replenishment.stream import consumers


@dataclass
class ReplenishmentService:
    common: CommonSettings
    settings: ReplenishmentSettings
    keyring: KeyRing
    engine: AsyncEngine
    handlers: SupplyHandlers
    consumers: list[IdempotentConsumer[Any]]
    relay: OutboxRelay

    async def start(self) -> None:
        self.relay.start()
        if self.settings.consumer_enabled:
            for consumer in self.consumers:
                consumer.start()

    async def stop(self) -> None:
        for consumer in reversed(self.consumers):
            await consumer.stop()
        await self.relay.stop()
        await self.engine.dispose()

    def readiness_checks(self) -> dict[str, Any]:
        return {"database": database_check(self.engine)}


def build(common: CommonSettings | None = None, settings: ReplenishmentSettings | None = None) -> ReplenishmentService:
    common = common or CommonSettings()
    settings = settings or ReplenishmentSettings()
    engine = make_engine(common.database_url, schema=settings.schema_name, pool_size=settings.db_pool_size)
    prefix = common.topic_prefix
    relay = relay_for(common, engine, outbox, service=SERVICE_NAME, lock_id=0x52504C4E,
                      idle_poll=settings.relay_idle_poll_seconds)
    handlers = SupplyHandlers(engine, settings.policy(), topic_prefix=prefix, wake_relay=relay.wake)
    return ReplenishmentService(common, settings, KeyRing.from_settings(common.api_keys, common.env), engine, handlers,
                                consumers(common, engine, handlers, batch=settings.consumer_batch), relay)
