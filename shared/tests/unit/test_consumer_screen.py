"""The shared screen for sales consumers that run on event time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace

from crm_shared.consumer import sale_from_the_future
from crm_shared.events import Sale, SaleLine, sale_recorded

WRITTEN = datetime(2011, 6, 1, 12, tzinfo=UTC)


def envelope(occurred_at: datetime) -> object:
    sale = Sale(sale_id="1", store_id="s1", terminal_id="t1", occurred_at=occurred_at, currency="GBP",
                lines=[SaleLine(sku="A", quantity=1, unit_price=Decimal("1"))])
    return sale_recorded(sale, source="test")


def test_a_sale_dated_more_than_a_day_after_its_record_is_refused_with_the_reason() -> None:
    record = SimpleNamespace(timestamp=int(WRITTEN.timestamp() * 1000))
    assert sale_from_the_future(envelope(WRITTEN + timedelta(hours=23)), record) is None
    assert sale_from_the_future(envelope(WRITTEN - timedelta(days=400)), record) is None  # a replay of old sales
    reason = sale_from_the_future(envelope(WRITTEN + timedelta(days=3)), record)
    assert reason is not None and "more than 24 h after the record was written" in reason
