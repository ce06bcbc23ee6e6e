"""Kafka edge of replenishment: idempotent consumers of sales, the catalog, goods receipts and supplier acks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from crm_shared.consumer import IdempotentConsumer, decoder_for
from crm_shared.events import ProductListed, SaleRecorded
from crm_shared.kafka import make_consumer, make_producer
from crm_shared.marketing_events import OfferPublished
from crm_shared.settings import CommonSettings
from crm_shared.supply_events import GoodsReceived, SupplierAcknowledged
from crm_shared.topics import CATALOG_PRODUCTS, INVENTORY_RECEIPTS, MARKETING_OFFERS, POS_SALES, SUPPLIER_ACKS, Topic

from replenishment import SERVICE_NAME
from replenishment.store import applied_events

MAX_AHEAD_OF_RECORD = timedelta(hours=24)


def sale_from_the_future(event: Any, record: Any) -> str | None:
    """A sale dated far ahead of when it was written would close every ordering cycle up to that day."""
    produced = datetime.fromtimestamp(record.timestamp / 1000, UTC)
    if event.payload.occurred_at > produced + MAX_AHEAD_OF_RECORD:
        return f"occurred_at {event.payload.occurred_at.isoformat()} is more than 24 h after the record was written"
    return None


def consumer_for(common: CommonSettings, engine: Any, topic: Topic, name: str, model: Any, handle: Any, *,
                 batch: int = 500, after_commit: Any = None, screen: Any = None) -> IdempotentConsumer[Any]:
    prefix = common.topic_prefix
    group = f"{prefix}{SERVICE_NAME}.{name}"
    qualified = topic.qualified(prefix)
    return IdempotentConsumer(
        name=group, engine=engine, applied=applied_events, topic=qualified, dlq_topic=topic.dlq(prefix),
        decode=decoder_for(model), handle=handle, after_commit=after_commit, screen=screen,
        consumer_factory=partial(make_consumer, common.kafka_bootstrap, qualified, group_id=group, client_id=group,
                                 max_poll_records=batch),
        producer_factory=partial(make_producer, common.kafka_bootstrap, client_id=group), max_records=batch,
    )


def consumers(common: CommonSettings, engine: Any, handlers: Any, *, batch: int) -> list[IdempotentConsumer[Any]]:
    """Catalog first: terms should be in before the first sale asks for them."""
    return [
        consumer_for(common, engine, CATALOG_PRODUCTS, "catalog", ProductListed, handlers.apply_catalog, batch=2000),
        consumer_for(common, engine, MARKETING_OFFERS, "offers", OfferPublished, handlers.apply_offers, batch=2000),
        consumer_for(common, engine, POS_SALES, "sales", SaleRecorded, handlers.apply_sales, batch=batch,
                     after_commit=handlers.after_commit, screen=sale_from_the_future),
        consumer_for(common, engine, INVENTORY_RECEIPTS, "receipts", GoodsReceived, handlers.apply_receipts,
                     after_commit=handlers.after_commit),
        consumer_for(common, engine, SUPPLIER_ACKS, "acks", SupplierAcknowledged, handlers.apply_acks,
                     after_commit=handlers.after_commit),
    ]
