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


def profile_envelope(**overrides: object) -> object:
    from crm_shared.events import MemberProfileUpdated, member_event

    payload = {"member_id": "m1", "as_of": "2011-06-01T12:00:00+00:00", "first_purchase_at": "2011-01-03T10:00:00+00:00",
               "last_purchase_at": "2011-05-30T10:00:00+00:00", "recency_days": 2.1, "frequency": 5, "returns": 0,
               "monetary": "120.50", "average_basket_value": "24.10", "average_basket_size": 7.5,
               "returns_rate": 0.0, "discount_share": 0.1, "preferred_store": "s1", "hour_of_day": {"10": 5},
               "weekday": {"0": 5}, "visit_rhythm": {"intervals": 4, "mean_days": 36.5, "spread_days": 4.0,
                                                     "days_overdue": None},
               "tier": "member", "points_balance": 120, "categories": {"home": 0.6}, "brands": {}}
    for name, value in overrides.items():
        if name.startswith("visit_rhythm."):
            payload["visit_rhythm"] = {**payload["visit_rhythm"], name.split(".", 1)[1]: value}  # type: ignore[dict-item]
        else:
            payload[name] = value
    profile = MemberProfileUpdated.model_validate(payload)  # "NaN" and "inf" pass the contract: the screen's case
    return member_event(profile, event_type="MemberProfileUpdated", member_id="m1", occurred_at=profile.as_of,
                        source="test", identity="profile/m1/1")


def test_a_profile_with_a_nan_or_infinite_number_is_refused_naming_the_field() -> None:
    from crm_shared.consumer import profile_with_non_finite_numbers

    record = SimpleNamespace(timestamp=int(WRITTEN.timestamp() * 1000))
    assert profile_with_non_finite_numbers(profile_envelope(), record) is None
    assert profile_with_non_finite_numbers(profile_envelope(recency_days=None), record) is None
    cases = {"discount_share": ("NaN", "discount_share"), "returns_rate": ("inf", "returns_rate"),
             "average_basket_size": ("-inf", "average_basket_size"),
             "visit_rhythm.mean_days": ("NaN", "visit_rhythm.mean_days"),
             "visit_rhythm.days_overdue": ("inf", "visit_rhythm.days_overdue"),
             "categories": ({"home": "NaN"}, "categories.home")}
    for field, (value, named) in cases.items():
        reason = profile_with_non_finite_numbers(profile_envelope(**{field: value}), record)
        assert reason == f"not a finite number: {named}", (field, reason)
