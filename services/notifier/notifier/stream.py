"""Kafka edge of the notifier: idempotent consumers, each decoding one topic and calling one handler."""

from __future__ import annotations

from typing import Any

from crm_shared.consumer import IdempotentConsumer, consumer_for, sale_from_the_future
from crm_shared.events import (
    AssociationRulesChanged,
    Envelope,
    MemberContactability,
    MemberErased,
    MemberProfileUpdated,
    MemberSegmentChanged,
    Product,
    SaleRecorded,
    TierChanged,
)
from crm_shared.settings import CommonSettings
from crm_shared.supply_events import GoodsReceived, LowStockDetected
from crm_shared.topics import (
    ANALYTICS_ASSOCIATIONS,
    CATALOG_PRODUCTS,
    INVENTORY_LOW_STOCK,
    INVENTORY_RECEIPTS,
    MEMBER_CONSENTS,
    MEMBER_ERASED,
    MEMBER_PROFILES,
    MEMBER_SEGMENTS,
    MEMBER_TIER_CHANGED,
    POS_SALES,
    Topic,
)

from notifier import SERVICE_NAME
from notifier.handlers import NotifierHandlers
from notifier.store import applied_events

# (group suffix, topic, contract, handler name, after-commit name): the notifier's consumer groups.
CONSUMERS: tuple[tuple[str, Topic, Any, str, str | None], ...] = (
    ("sales", POS_SALES, SaleRecorded, "apply_sales", "after_offers"),
    ("segments", MEMBER_SEGMENTS, Envelope[MemberSegmentChanged], "apply_segments", "after_offers"),
    ("tiers", MEMBER_TIER_CHANGED, Envelope[TierChanged], "apply_tiers", "after_offers"),
    ("profiles", MEMBER_PROFILES, Envelope[MemberProfileUpdated], "apply_profiles", "after_offers"),
    ("erasures", MEMBER_ERASED, Envelope[MemberErased], "apply_erasures", None),
    ("rules", ANALYTICS_ASSOCIATIONS, Envelope[AssociationRulesChanged], "apply_rules", "after_rules"),
    ("low-stock", INVENTORY_LOW_STOCK, LowStockDetected, "apply_low_stock", None),
    ("receipts", INVENTORY_RECEIPTS, GoodsReceived, "apply_receipts", None),
    ("consents", MEMBER_CONSENTS, Envelope[MemberContactability], "apply_contacts", None),
    ("catalog", CATALOG_PRODUCTS, Envelope[Product], "apply_catalog", None),
)


# Sales dated far ahead of their record would move event time. (A profile with a NaN or infinite
# number breaks the contract: it never reaches purchase rhythms and reminder dates.)
SCREENS = {POS_SALES.name: sale_from_the_future}
# Groups whose handlers run a clock on event time (the sales clock's follow-ups, dormancy, tier and segment
# campaigns) read in event-time order across partitions; the rest record facts at their own time.
ON_EVENT_TIME = frozenset({POS_SALES.name, MEMBER_SEGMENTS.name, MEMBER_TIER_CHANGED.name, MEMBER_PROFILES.name})


def consumers(common: CommonSettings, engine: Any, handlers: NotifierHandlers, *, batch: int) -> list[IdempotentConsumer[Any]]:
    return [consumer_for(common, engine, applied_events, service=SERVICE_NAME, part=part, topic=topic, model=model,
                         handle=getattr(handlers, handle), after_commit=getattr(handlers, after) if after else None,
                         screen=SCREENS.get(topic.name), batch=batch, on_event_time=topic.name in ON_EVENT_TIME)
            for part, topic, model, handle, after in CONSUMERS]
