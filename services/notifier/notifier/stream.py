"""Kafka edge of the notifier: idempotent consumers, each decoding one topic and calling one handler."""

from __future__ import annotations

from typing import Any

from crm_shared.consumer import IdempotentConsumer, consumer_for
from crm_shared.events import (
    AssociationRulesChanged,
    Envelope,
    MemberErased,
    MemberProfileUpdated,
    MemberSegmentChanged,
    SaleRecorded,
    TierChanged,
)
from crm_shared.settings import CommonSettings
from crm_shared.supply_events import LowStockDetected
from crm_shared.topics import (
    ANALYTICS_ASSOCIATIONS,
    INVENTORY_LOW_STOCK,
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
)


def consumers(common: CommonSettings, engine: Any, handlers: NotifierHandlers, *, batch: int) -> list[IdempotentConsumer[Any]]:
    return [consumer_for(common, engine, applied_events, service=SERVICE_NAME, part=part, topic=topic, model=model,
                         handle=getattr(handlers, handle), after_commit=getattr(handlers, after) if after else None,
                         batch=batch)
            for part, topic, model, handle, after in CONSUMERS]
