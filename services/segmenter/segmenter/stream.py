"""Kafka edge of the segmenter: idempotent consumers of profiles, sales and erasures."""

from __future__ import annotations

from typing import Any

from crm_shared.consumer import IdempotentConsumer, consumer_for, sale_from_the_future
from crm_shared.events import Envelope, MemberErased, MemberProfileUpdated, SaleRecorded
from crm_shared.settings import CommonSettings
from crm_shared.topics import MEMBER_ERASED, MEMBER_PROFILES, POS_SALES

from segmenter import SERVICE_NAME
from segmenter.store import applied_events


def profiles_consumer(common: CommonSettings, engine: Any, handlers: Any, *, batch: int) -> IdempotentConsumer[Any]:
    """A profile with a NaN or infinite number breaks the contract and is dead-lettered (the clusters
    would learn it for good). On event time: the reviews fall due as the profiles' time passes each review midnight."""
    return consumer_for(common, engine, applied_events, service=SERVICE_NAME, part="profiles", topic=MEMBER_PROFILES,
                        model=Envelope[MemberProfileUpdated], handle=handlers.apply_profiles,
                        after_commit=handlers.after_profiles, batch=batch, on_event_time=True)


def sales_consumer(common: CommonSettings, engine: Any, handlers: Any, *, batch: int) -> IdempotentConsumer[Any]:
    """A sale dated more than a day after its record was written is dead-lettered: its event time
    would move every basket window to that day and evict every basket in it. On event time: the basket
    windows move with the sales' time."""
    return consumer_for(common, engine, applied_events, service=SERVICE_NAME, part="sales", topic=POS_SALES,
                        model=SaleRecorded, handle=handlers.apply_sales, after_commit=handlers.after_sales,
                        screen=sale_from_the_future, batch=batch, on_event_time=True)


def erasures_consumer(common: CommonSettings, engine: Any, handlers: Any) -> IdempotentConsumer[Any]:
    return consumer_for(common, engine, applied_events, service=SERVICE_NAME, part="erasures", topic=MEMBER_ERASED,
                        model=Envelope[MemberErased], handle=handlers.apply_erasures, batch=500)
