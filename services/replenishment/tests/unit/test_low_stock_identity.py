"""A low-stock episode's event id: the same episode always gets the same id, a new one a new id."""

from __future__ import annotations

from datetime import UTC, date, datetime

from replenishment.ledger import low_stock_event


def test_an_episode_that_ends_and_restarts_the_same_day_is_a_new_event() -> None:
    row = {"store_id": "s1", "sku": "A", "on_hand": 1, "on_order": 0, "forecast_daily": 5.0,
           "low_since": date(2011, 1, 3)}
    morning, evening = datetime(2011, 1, 3, 9, tzinfo=UTC), datetime(2011, 1, 3, 18, tzinfo=UTC)
    first = low_stock_event(row, morning, morning)
    assert low_stock_event(row, evening, morning).event_id == first.event_id  # a repeat: same id
    assert low_stock_event(row, evening, evening).event_id != first.event_id  # a new episode
