"""Kafka edge of the segmenter: idempotent consumers of profiles, sales and erasures."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from crm_shared.consumer import IdempotentConsumer, decoder_for
from crm_shared.events import Envelope, MemberErased, MemberProfileUpdated, SaleRecorded
from crm_shared.kafka import make_consumer, make_producer
from crm_shared.settings import CommonSettings
from crm_shared.topics import MEMBER_ERASED, MEMBER_PROFILES, POS_SALES, Topic

from segmenter import SERVICE_NAME
from segmenter.store import applied_events


def _consumer(common: CommonSettings, engine: Any, topic: Topic, part: str, decode: Any,
              handle: Callable[..., Awaitable[Any]], after_commit: Callable[[Any], Awaitable[None]] | None,
              batch: int) -> IdempotentConsumer[Any]:
    prefix = common.topic_prefix
    group = f"{prefix}{SERVICE_NAME}.{part}"
    name = topic.qualified(prefix)
    return IdempotentConsumer(
        name=group, engine=engine, applied=applied_events, topic=name, dlq_topic=topic.dlq(prefix),
        decode=decode, handle=handle, after_commit=after_commit,
        consumer_factory=partial(make_consumer, common.kafka_bootstrap, name, group_id=group, client_id=group,
                                 max_poll_records=batch),
        producer_factory=partial(make_producer, common.kafka_bootstrap, client_id=group), max_records=batch,
    )


def profiles_consumer(common: CommonSettings, engine: Any, handlers: Any, *, batch: int) -> IdempotentConsumer[Any]:
    return _consumer(common, engine, MEMBER_PROFILES, "profiles", decoder_for(Envelope[MemberProfileUpdated]),
                     handlers.apply_profiles, handlers.after_profiles, batch)


def sales_consumer(common: CommonSettings, engine: Any, handlers: Any, *, batch: int) -> IdempotentConsumer[Any]:
    return _consumer(common, engine, POS_SALES, "sales", decoder_for(SaleRecorded), handlers.apply_sales,
                     handlers.after_sales, batch)


def erasures_consumer(common: CommonSettings, engine: Any, handlers: Any) -> IdempotentConsumer[Any]:
    return _consumer(common, engine, MEMBER_ERASED, "erasures", decoder_for(Envelope[MemberErased]),
                     handlers.apply_erasures, None, 500)
