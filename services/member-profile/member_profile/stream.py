"""Kafka edge of member-profile: the idempotent consumer of `pos.sales.v1`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from crm_shared.consumer import IdempotentConsumer, decoder_for
from crm_shared.events import Envelope, MemberSegmentChanged, ProductListed, SaleRecorded
from crm_shared.kafka import make_consumer, make_producer
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
    prefix = common.topic_prefix
    group = f"{prefix}{SERVICE_NAME}.sales"
    topic = POS_SALES.qualified(prefix)
    return IdempotentConsumer(
        name=group, engine=engine, applied=applied_events, topic=topic, dlq_topic=POS_SALES.dlq(prefix),
        decode=decoder_for(SaleRecorded), handle=handlers.apply_sales, after_commit=handlers.after_commit,
        screen=sale_from_the_future,
        consumer_factory=partial(make_consumer, common.kafka_bootstrap, topic, group_id=group, client_id=group,
                                 max_poll_records=batch),
        producer_factory=partial(make_producer, common.kafka_bootstrap, client_id=group), max_records=batch,
    )


def catalog_consumer(common: CommonSettings, engine: Any, handle: Any) -> IdempotentConsumer[Any]:
    prefix = common.topic_prefix
    group = f"{prefix}{SERVICE_NAME}.catalog"
    topic = CATALOG_PRODUCTS.qualified(prefix)
    return IdempotentConsumer(
        name=group, engine=engine, applied=applied_events, topic=topic, dlq_topic=CATALOG_PRODUCTS.dlq(prefix),
        decode=decoder_for(ProductListed), handle=handle,
        consumer_factory=partial(make_consumer, common.kafka_bootstrap, topic, group_id=group, client_id=group),
        producer_factory=partial(make_producer, common.kafka_bootstrap, client_id=group),
    )


def segments_consumer(common: CommonSettings, engine: Any, handle: Any) -> IdempotentConsumer[Any]:
    """The segmenter's changes, kept per member for `GET /v1/members?segment=`."""
    prefix = common.topic_prefix
    group = f"{prefix}{SERVICE_NAME}.segments"
    topic = MEMBER_SEGMENTS.qualified(prefix)
    return IdempotentConsumer(
        name=group, engine=engine, applied=applied_events, topic=topic, dlq_topic=MEMBER_SEGMENTS.dlq(prefix),
        decode=decoder_for(Envelope[MemberSegmentChanged]), handle=handle,
        consumer_factory=partial(make_consumer, common.kafka_bootstrap, topic, group_id=group, client_id=group),
        producer_factory=partial(make_producer, common.kafka_bootstrap, client_id=group),
    )
