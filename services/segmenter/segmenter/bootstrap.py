"""Wires the segmenter's clients, handlers and consumers. Nothing connects at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from crm_shared.auth import KeyRing
from crm_shared.consumer import IdempotentConsumer
from crm_shared.db import make_engine
from crm_shared.outbox import OutboxRelay, relay_for
from crm_shared.settings import CommonSettings
from crm_shared.web import database_check
from sqlalchemy.ext.asyncio import AsyncEngine

from segmenter import SERVICE_NAME
from segmenter.handlers import SegmentHandlers
from segmenter.settings import SegmenterSettings
from segmenter.store import outbox
from segmenter.stream import erasures_consumer, profiles_consumer, sales_consumer

log = logging.getLogger(__name__)


@dataclass
class SegmenterService:
    common: CommonSettings
    settings: SegmenterSettings
    keyring: KeyRing
    engine: AsyncEngine
    handlers: SegmentHandlers
    consumers: list[IdempotentConsumer[Any]]
    relay: OutboxRelay
    _background: asyncio.Task[None] | None = field(default=None, init=False)

    async def start(self) -> None:
        await self.handlers.restore()
        self.relay.start()
        if self.settings.consumer_enabled:
            for consumer in self.consumers:
                consumer.start()
        self._background = asyncio.create_task(self._rules_loop(), name="rules-publisher")

    async def _rules_loop(self) -> None:
        """Publishes the top rules of each scope when they change; trims baskets out of the window."""
        while True:
            await asyncio.sleep(self.settings.rules_publish_seconds)
            try:
                await self.handlers.publish_rules_if_changed()
                await self.handlers.trim_baskets()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("rules publishing failed; will retry", extra={"error": repr(exc)})

    async def stop(self) -> None:
        if self._background is not None:
            self._background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._background
        for consumer in self.consumers:
            await consumer.stop()
        await self.relay.stop()
        self.handlers.miner.close()
        await self.engine.dispose()

    def readiness_checks(self) -> dict[str, Any]:
        return {"database": database_check(self.engine)}


def build(common: CommonSettings | None = None, settings: SegmenterSettings | None = None) -> SegmenterService:
    common = common or CommonSettings()
    settings = settings or SegmenterSettings()
    engine = make_engine(common.database_url, schema=settings.schema_name, pool_size=settings.db_pool_size)
    prefix = common.topic_prefix
    relay = relay_for(common, engine, outbox, service=SERVICE_NAME, lock_id=0x5345475F,
                      idle_poll=settings.relay_idle_poll_seconds)
    handlers = SegmentHandlers(engine, settings, topic_prefix=prefix, wake_relay=relay.wake)
    consumers = [
        profiles_consumer(common, engine, handlers, batch=settings.consumer_batch),
        sales_consumer(common, engine, handlers, batch=settings.consumer_batch),
        erasures_consumer(common, engine, handlers),
    ]
    return SegmenterService(common, settings, KeyRing.from_settings(common.api_keys, common.env), engine, handlers,
                            consumers, relay)
