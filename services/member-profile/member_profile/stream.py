"""Kafka edge of member-profile: idempotent consumers of sales, the catalog and the segmenter's changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from crm_shared.consumer import IdempotentConsumer, consumer_for
from crm_shared.events import Envelope, MemberSegmentChanged, ProductListed, SaleRecorded
from crm_shared.settings import CommonSettings
from crm_shared.topics import CATALOG_PRODUCTS, MEMBER_SEGMENTS, POS_SALES

from member_profile import SERVICE_NAME
from member_profile.store import applied_events

MAX_AHEAD_OF_RECORD = timedelta(hours=24)


def sale_from_the_future(event: Any, record: Any) -> str | None:
    """Event time moves every member's recency, expiry and tiers, so one sale dated years ahead
    (typed wrong, or sent straight to Kafka past the gateway's check) must not move it."""
    produced = datetime.fromtimestamp(record.timestamp / 1000, UTC)
    if event.payload.occurred_at > produced + MAX_AHEAD_OF_RECORD:
        return f"occurred_at {event.payload.occurred_at.isoformat()} is more than 24 h after the record was written"
    return None


def sales_consumer(common: CommonSettings, engine: Any, handlers: Any, *, batch: int) -> IdempotentConsumer[Any]:
    return consumer_for(common, engine, applied_events, service=SERVICE_NAME, part="sales", topic=POS_SALES,
                        model=SaleRecorded, handle=handlers.apply_sales, after_commit=handlers.after_commit,
                        screen=sale_from_the_future, batch=batch)


def catalog_consumer(common: CommonSettings, engine: Any, handle: Any) -> IdempotentConsumer[Any]:
    return consumer_for(common, engine, applied_events, service=SERVICE_NAME, part="catalog", topic=CATALOG_PRODUCTS,
                        model=ProductListed, handle=handle)


def segments_consumer(common: CommonSettings, engine: Any, handle: Any) -> IdempotentConsumer[Any]:
    """The segmenter's changes, kept per member for `GET /v1/members?segment=`."""
    return consumer_for(common, engine, applied_events, service=SERVICE_NAME, part="segments", topic=MEMBER_SEGMENTS,
                        model=Envelope[MemberSegmentChanged], handle=handle)
