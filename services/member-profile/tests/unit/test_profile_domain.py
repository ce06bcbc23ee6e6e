"""How sales and returns change a member's profile (pure: no broker, no database, no clock)."""

from __future__ import annotations

import statistics
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from crm_shared.events import Sale
from member_profile.domain import Profile, Rhythm, apply_sale, days_overdue, profile_view, recency_days, rhythm_of

T0 = datetime(2011, 1, 3, 10, 30, tzinfo=UTC)  # a Monday


def sale(sale_id: str, when: datetime, *, kind: str = "sale", store: str = "s1",
         lines: list[dict[str, Any]] | None = None) -> Sale:
    return Sale.model_validate({
        "sale_id": sale_id, "store_id": store, "terminal_id": "t1", "member_id": "m1", "occurred_at": when.isoformat(),
        "currency": "GBP", "kind": kind,
        "lines": lines or [{"sku": "A", "quantity": 2, "unit_price": "5.00"},
                           {"sku": "B", "quantity": 1, "unit_price": "3.00", "discount": "1.00"}],
    })


def replay(*sales: Sale) -> Profile:
    profile = Profile("m1")
    for one in sales:
        profile = apply_sale(profile, one)
    return profile


def test_frequency_counts_sales_and_monetary_is_net_of_returns() -> None:
    profile = replay(sale("1", T0), sale("2", T0 + timedelta(days=3)),
                     sale("R1", T0 + timedelta(days=4), kind="return", lines=[{"sku": "A", "quantity": 1, "unit_price": "5.00"}]))
    assert profile.frequency == 2 and profile.returns == 1
    assert profile.monetary == Decimal("19.00")  # 2 × 12.00 − 5.00
    assert profile.gross_sales == Decimal("24.00")
    assert profile.average_basket_value == Decimal("12.00")
    assert profile.average_basket_size == 3.0
    assert profile.returns_rate == pytest.approx(1 / 6)
    assert profile.discount_share == pytest.approx(2 / 6)  # one discounted unit per sale
    assert profile.last_purchase_at == T0 + timedelta(days=3)  # a return is not a purchase


def test_first_and_last_purchase_do_not_depend_on_arrival_order() -> None:
    early, late = sale("1", T0), sale("2", T0 + timedelta(days=10))
    assert replay(late, early).first_purchase_at == replay(early, late).first_purchase_at == T0
    assert replay(late, early).last_purchase_at == T0 + timedelta(days=10)


def test_habits_preferred_store_hour_and_weekday() -> None:
    profile = replay(sale("1", T0, store="s2"), sale("2", T0 + timedelta(days=7), store="s1"),
                     sale("3", T0 + timedelta(days=14), store="s2"))
    assert profile.preferred_store == "s2"
    assert profile.hour_of_day == {"10": 3}
    assert profile.weekday == {"0": 3}
    tie = replay(sale("1", T0, store="zz"), sale("2", T0 + timedelta(days=1), store="aa"))
    assert tie.preferred_store == "aa"  # a tie goes to the first store id, so the answer is stable


def test_rhythm_is_the_mean_and_spread_of_days_between_visit_days() -> None:
    gaps = [7, 3, 10, 4]
    days = [date(2011, 1, 1)]
    for gap in gaps:
        days.append(days[-1] + timedelta(days=gap))
    rhythm = rhythm_of([*days, days[2]])  # a second purchase on a visit day is not a new visit
    assert rhythm.intervals == 4
    assert rhythm.mean_days == pytest.approx(statistics.mean(gaps))
    assert rhythm.spread_days == pytest.approx(statistics.stdev(gaps))
    assert rhythm_of(reversed(days)) == rhythm


def test_a_visit_older_than_the_last_asks_for_a_rebuild_instead_of_a_wrong_rhythm() -> None:
    profile = replay(sale("1", T0), sale("2", T0 + timedelta(days=10)))
    assert profile.rhythm.intervals == 1 and not profile.rhythm_needs_rebuild
    late_arrival = apply_sale(profile, sale("0", T0 + timedelta(days=4)))
    assert late_arrival.rhythm_needs_rebuild
    assert late_arrival.rhythm == profile.rhythm  # untouched until rebuilt from the history
    assert rhythm_of([T0.date(), (T0 + timedelta(days=4)).date(), (T0 + timedelta(days=10)).date()]).intervals == 2


def test_recency_and_overdue_are_measured_in_event_time() -> None:
    profile = replay(*(sale(str(i), T0 + timedelta(days=7 * i)) for i in range(5)))  # weekly, no spread
    last = T0 + timedelta(days=28)
    assert recency_days(profile, last + timedelta(days=3)) == pytest.approx(3.0)
    assert days_overdue(profile, last + timedelta(days=10)) == pytest.approx(3.0)  # 10 − (7 + 2·0)
    assert days_overdue(Profile("new"), last) is None
    view = profile_view(profile, last + timedelta(days=10))
    assert view["visit_rhythm"]["days_overdue"] == pytest.approx(3.0)
    assert view["as_of"] == last + timedelta(days=10)


def test_rhythm_after_visit_ignores_the_same_day() -> None:
    rhythm = Rhythm().after_visit(date(2011, 1, 1)).after_visit(date(2011, 1, 1))
    assert rhythm.intervals == 0 and rhythm.last_visit_day == date(2011, 1, 1)
