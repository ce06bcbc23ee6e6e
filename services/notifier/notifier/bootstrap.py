"""Wires the notifier's clients, handlers and consumers. Nothing connects at import time."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from crm_shared.auth import KeyRing
from crm_shared.consumer import IdempotentConsumer
from crm_shared.db import make_engine
from crm_shared.outbox import OutboxRelay, relay_for
from crm_shared.settings import CommonSettings
from crm_shared.topics import MARKETING_OFFER_WEBHOOKS_DLQ, MARKETING_OFFERS
from crm_shared.web import database_check
from sqlalchemy.ext.asyncio import AsyncEngine

from notifier import SERVICE_NAME
from notifier.deferred import DeferredOffers
from notifier.handlers import NotifierHandlers
from notifier.settings import NotifierSettings
from notifier.store import outbox
from notifier.stream import consumers
from notifier.webhooks import WebhookSender

log = logging.getLogger(__name__)


@dataclass
class NotifierService:
    common: CommonSettings
    settings: NotifierSettings
    keyring: KeyRing
    engine: AsyncEngine
    handlers: NotifierHandlers
    consumers: list[IdempotentConsumer[Any]]
    relay: OutboxRelay
    webhooks: WebhookSender
    deferred: DeferredOffers

    async def start(self) -> None:
        await self.handlers.restore()
        self.relay.start()
        self.webhooks.start()
        self.deferred.start()
        if self.settings.consumer_enabled:
            for consumer in self.consumers:
                consumer.start()

    async def stop(self) -> None:
        for consumer in self.consumers:
            await consumer.stop()
        await self.deferred.stop()
        await self.webhooks.stop()
        await self.relay.stop()
        await self.engine.dispose()

    def readiness_checks(self) -> dict[str, Any]:
        return {"database": database_check(self.engine)}


def build(common: CommonSettings | None = None, settings: NotifierSettings | None = None) -> NotifierService:
    common = common or CommonSettings()
    settings = settings or NotifierSettings()
    if common.env == "production":
        for name in ("pseudonym_key", "webhook_secret"):
            if getattr(settings, name).startswith("dev-"):
                raise ValueError(f"NOTIFIER_{name.upper()} must be set to a real secret in production")
    # no pre-ping (a round trip per transaction on the offer path): a connection lost to a PostgreSQL
    # restart fails its batch, the pool drops it, and the consumer reads the batch again
    engine = make_engine(common.database_url, schema=settings.schema_name, pool_size=settings.db_pool_size,
                         pre_ping=False)
    prefix = common.topic_prefix
    relay = relay_for(common, engine, outbox, service=SERVICE_NAME, lock_id=0x4E4F5446,
                      idle_poll=settings.relay_idle_poll_seconds)
    webhooks = WebhookSender(engine, settings, dlq_topic=MARKETING_OFFER_WEBHOOKS_DLQ.qualified(prefix),
                             wake_relay=relay.wake)
    handlers = NotifierHandlers(engine, settings, topic_prefix=prefix, wake_relay=relay.wake,
                                wake_webhooks=webhooks.wake)
    deferred = DeferredOffers(engine, topic=MARKETING_OFFERS.qualified(prefix), poll_seconds=settings.deferred_poll_seconds,
                              wake_relay=relay.wake)
    return NotifierService(common, settings, KeyRing.from_settings(common.api_keys, common.env), engine, handlers,
                           consumers(common, engine, handlers, batch=settings.consumer_batch), relay, webhooks, deferred)
