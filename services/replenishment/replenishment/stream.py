"""Kafka edge of replenishment: idempotent consumers of sales (stock; sell-through), the catalog, goods receipts,
supplier acks and offers."""

from __future__ import annotations

from typing import Any

from crm_shared.consumer import IdempotentConsumer, consumer_for, sale_from_the_future
from crm_shared.events import ProductListed, SaleRecorded
from crm_shared.marketing_events import OfferPublished
from crm_shared.settings import CommonSettings
from crm_shared.supply_events import GoodsReceived, SupplierAcknowledged
from crm_shared.topics import CATALOG_PRODUCTS, INVENTORY_RECEIPTS, MARKETING_OFFERS, POS_SALES, SUPPLIER_ACKS

from replenishment import SERVICE_NAME
from replenishment.store import applied_events, applied_sell_through


def consumers(common: CommonSettings, engine: Any, handlers: Any, *, batch: int) -> list[IdempotentConsumer[Any]]:
    """Catalog first: terms should be in before the first sale asks for them."""
    def wired(topic: Any, part: str, model: Any, handle: Any, *, batch: int = 500, after_commit: Any = None,
              screen: Any = None, applied: Any = applied_events, on_event_time: bool = False) -> IdempotentConsumer[Any]:
        return consumer_for(common, engine, applied, service=SERVICE_NAME, part=part, topic=topic, model=model,
                            handle=handle, after_commit=after_commit, screen=screen, batch=batch,
                            on_event_time=on_event_time)

    return [
        wired(CATALOG_PRODUCTS, "catalog", ProductListed, handlers.apply_catalog, batch=2000),
        wired(MARKETING_OFFERS, "offers", OfferPublished, handlers.apply_offers, batch=2000),
        # On event time: stores' days (and the ordering cycles they close) move with the sales' time.
        wired(POS_SALES, "sales", SaleRecorded, handlers.apply_sales, batch=batch, after_commit=handlers.after_commit,
              screen=sale_from_the_future, on_event_time=True),
        # Sell-through in its own group (and its own record of what it applied): its upsert runs beside
        # the stock batches instead of inside them.
        wired(POS_SALES, "sell-through", SaleRecorded, handlers.apply_sell_through, batch=batch,
              screen=sale_from_the_future, applied=applied_sell_through),
        wired(INVENTORY_RECEIPTS, "receipts", GoodsReceived, handlers.apply_receipts, after_commit=handlers.after_commit),
        wired(SUPPLIER_ACKS, "acks", SupplierAcknowledged, handlers.apply_acks, after_commit=handlers.after_commit),
    ]
