"""Which consumer groups read in event-time order across partitions (`consumer_for(on_event_time=True)`):
every group whose handler runs a clock on event time, and no other."""

from __future__ import annotations

from unittest.mock import MagicMock

from crm_shared.consumer import IdempotentConsumer, envelope_time
from crm_shared.settings import CommonSettings


def parts(built: list[IdempotentConsumer[object]]) -> dict[str, bool]:
    return {c.name.rsplit(".", 1)[-1]: c.event_time is envelope_time for c in built}


def test_groups_on_event_time() -> None:
    from member_profile import stream as member_stream
    from notifier import stream as notifier_stream
    from replenishment import stream as replenishment_stream
    from segmenter import stream as segmenter_stream

    common, engine, handlers = CommonSettings(), MagicMock(), MagicMock()
    segmenter = parts([segmenter_stream.profiles_consumer(common, engine, handlers, batch=100),
                       segmenter_stream.sales_consumer(common, engine, handlers, batch=100),
                       segmenter_stream.erasures_consumer(common, engine, handlers)])
    assert segmenter == {"profiles": True, "sales": True, "erasures": False}
    member = parts([member_stream.sales_consumer(common, engine, handlers, batch=100),
                    member_stream.catalog_consumer(common, engine, handlers.apply_catalog),
                    member_stream.segments_consumer(common, engine, handlers.apply_segments)])
    assert member == {"sales": True, "catalog": False, "segments": False}
    replenishment = parts(replenishment_stream.consumers(common, engine, handlers, batch=100))
    assert replenishment == {"catalog": False, "offers": False, "sales": True, "sell-through": False,
                             "receipts": False, "acks": False}
    notifier = parts(notifier_stream.consumers(common, engine, handlers, batch=100))
    assert {part for part, aligned in notifier.items() if aligned} == {"sales", "segments", "tiers", "profiles"}
    assert len(notifier) == 10
