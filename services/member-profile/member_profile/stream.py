"""Kafka edge of member-profile: idempotent consumers of sales, the catalog and the segmenter's changes."""

from __future__ import annotations

from typing import Any

from crm_shared.consumer import IdempotentConsumer, consumer_for, sale_from_the_future
from crm_shared.events import Envelope, MemberSegmentChanged, ProductListed, SaleRecorded
from crm_shared.settings import CommonSettings
from crm_shared.topics import CATALOG_PRODUCTS, MEMBER_SEGMENTS, POS_SALES

from member_profile import SERVICE_NAME
from member_profile.store import applied_events


def sales_consumer(common: CommonSettings, engine: Any, handlers: Any, *, batch: int) -> IdempotentConsumer[Any]:
    """On event time: the watermark that expires points and rolls tier spend moves with the sales' time."""
    return consumer_for(common, engine, applied_events, service=SERVICE_NAME, part="sales", topic=POS_SALES,
                        model=SaleRecorded, handle=handlers.apply_sales, after_commit=handlers.after_commit,
                        screen=sale_from_the_future, batch=batch, on_event_time=True)


def catalog_consumer(common: CommonSettings, engine: Any, handle: Any) -> IdempotentConsumer[Any]:
    return consumer_for(common, engine, applied_events, service=SERVICE_NAME, part="catalog", topic=CATALOG_PRODUCTS,
                        model=ProductListed, handle=handle)


def segments_consumer(common: CommonSettings, engine: Any, handle: Any) -> IdempotentConsumer[Any]:
    """The segmenter's changes, kept per member for `GET /v1/members?segment=`."""
    return consumer_for(common, engine, applied_events, service=SERVICE_NAME, part="segments", topic=MEMBER_SEGMENTS,
                        model=Envelope[MemberSegmentChanged], handle=handle)
