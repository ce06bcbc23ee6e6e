"""pos-gateway's decisions: what a terminal is told when it sends a sale, a return or a resubmission."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest
from crm_shared.events import Sale
from pos_gateway.domain import (
    check_return,
    check_scope,
    check_timing,
    decide_resubmission,
    fingerprint,
    first_difference,
    money_units,
    units_to_money,
    window_buckets,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
MAX_FUTURE = timedelta(hours=24)


def sale(**overrides: Any) -> Sale:
    body: dict[str, Any] = {
        "sale_id": "536365",
        "store_id": "uk-01",
        "terminal_id": "till-3",
        "member_id": "17850",
        "occurred_at": "2024-05-01T10:00:00+00:00",
        "currency": "GBP",
        "lines": [
            {"sku": "85123A", "quantity": 6, "unit_price": "2.55"},
            {"sku": "71053", "quantity": 2, "unit_price": "3.39"},
        ],
    }
    body.update(overrides)
    return Sale.model_validate(body)


def line(sku: str, quantity: int, unit_price: str = "2.55", **extra: Any) -> dict[str, Any]:
    return {"sku": sku, "quantity": quantity, "unit_price": unit_price, **extra}


def a_return(*lines: dict[str, Any], sale_id: str = "C1", original: str | None = "536365") -> Sale:
    return sale(sale_id=sale_id, kind="return", original_sale_id=original, lines=list(lines))


# --- fingerprint -------------------------------------------------------------------------------


def test_the_same_price_written_differently_has_the_same_fingerprint() -> None:
    short = sale(lines=[line("85123A", 6, "1.5", discount="0")])
    padded = sale(lines=[line("85123A", 6, "1.50", discount="0.00")])

    assert fingerprint(short) == fingerprint(padded)


@pytest.mark.parametrize("price", ["0", "0.00", "0.5", "0.50", "2.55", "12.00", "100", "100.0", "1000.5000",
                                   "0.0001", "10", "007.50", "39.9500"])
def test_fingerprints_already_in_the_ledger_stay_valid(price: str) -> None:
    # The ledger keeps fingerprints made by normalising each price as a Decimal; a resubmission of
    # such a sale must still be recognised as the same sale.
    recorded = sale(lines=[line("85123A", 6, price, discount=price)])
    canonical = recorded.model_dump(mode="json")
    # ledger fingerprints predate the optional `offer_code` on a line: a line without one hashes as before
    canonical["lines"] = [{**{k: v for k, v in each.items() if k != "offer_code"},
                           "unit_price": format(Decimal(each["unit_price"]).normalize(), "f"),
                           "discount": format(Decimal(each["discount"]).normalize(), "f")}
                          for each in canonical["lines"]]
    canonical["occurred_at"] = recorded.occurred_at.timestamp()

    assert fingerprint(recorded) == hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()


def test_the_same_instant_in_two_time_zones_has_the_same_fingerprint() -> None:
    london = sale(occurred_at="2024-05-01T10:00:00+00:00")
    paris = sale(occurred_at="2024-05-01T12:00:00+02:00")

    assert fingerprint(london) == fingerprint(paris)


@pytest.mark.parametrize("changed", [
    {"lines": [line("85123A", 7), line("71053", 2, "3.39")]},
    {"lines": [line("85123A", 6, "2.56"), line("71053", 2, "3.39")]},
    {"lines": [line("85123A", 6, discount="0.01"), line("71053", 2, "3.39")]},
    {"occurred_at": "2024-05-01T10:00:01+00:00"},
    {"member_id": None},
    {"currency": "EUR"},
])
def test_a_change_in_meaning_changes_the_fingerprint(changed: dict[str, Any]) -> None:
    assert fingerprint(sale(**changed)) != fingerprint(sale())


# --- timing ------------------------------------------------------------------------------------


def test_a_sale_more_than_a_day_ahead_is_refused_on_occurred_at() -> None:
    ahead = sale(occurred_at=(NOW + timedelta(hours=24, seconds=1)).isoformat())

    refusal = check_timing(ahead, now=NOW, max_future=MAX_FUTURE)

    assert refusal is not None
    assert (refusal.status, refusal.error, refusal.field) == (422, "validation_failed", "occurred_at")
    assert "24 h" in refusal.reason


@pytest.mark.parametrize("occurred_at", [
    NOW + timedelta(hours=23),
    NOW + timedelta(hours=24),
    NOW,
    NOW - timedelta(days=3650),
    datetime(1990, 1, 1, tzinfo=UTC),
])
def test_a_sale_within_a_day_ahead_or_in_the_past_is_accepted(occurred_at: datetime) -> None:
    assert check_timing(sale(occurred_at=occurred_at.isoformat()), now=NOW, max_future=MAX_FUTURE) is None


def test_timing_compares_instants_not_wall_clocks() -> None:
    # 20:00 in Tokyo is 11:00 UTC: not in the future at all, though the wall clock reads 8 h ahead.
    tokyo = sale(occurred_at="2024-05-01T20:00:00+09:00")
    # 11:00 at UTC-14 is 01:00 the next day UTC: 13 h ahead of noon UTC.
    far_west = sale(occurred_at="2024-05-01T11:00:00-14:00")

    assert check_timing(tokyo, now=NOW, max_future=timedelta(hours=1)) is None
    assert check_timing(far_west, now=NOW, max_future=timedelta(hours=12)) is not None
    assert check_timing(far_west, now=NOW, max_future=timedelta(hours=13)) is None


# --- scope -------------------------------------------------------------------------------------


def test_a_key_for_one_store_cannot_ring_up_another_stores_sale() -> None:
    refusal = check_scope(sale(store_id="uk-02"), "uk-01")

    assert refusal is not None
    assert (refusal.status, refusal.error, refusal.field) == (403, "forbidden", "store_id")
    assert "uk-01" in refusal.reason and "uk-02" in refusal.reason


def test_a_key_for_the_same_store_or_without_a_store_is_accepted() -> None:
    assert check_scope(sale(store_id="uk-01"), "uk-01") is None
    assert check_scope(sale(store_id="uk-02"), None) is None


# --- returns -----------------------------------------------------------------------------------


ORIGINAL = sale(lines=[line("A", 3), line("B", 1)])


def test_returning_more_than_was_sold_names_the_line_and_what_is_left() -> None:
    refusal = check_return(a_return(line("B", 1), line("A", 4)), ORIGINAL, [])

    assert refusal is not None
    assert (refusal.status, refusal.field) == (422, "lines.1.quantity")
    assert "only 3" in refusal.reason


def test_two_lines_of_the_same_sku_are_added_up() -> None:
    refusal = check_return(a_return(line("A", 2), line("A", 2)), ORIGINAL, [])

    assert refusal is not None
    assert refusal.field == "lines.1.quantity"
    assert "returns 4" in refusal.reason


def test_returning_a_sku_that_was_not_sold_names_the_sku() -> None:
    refusal = check_return(a_return(line("A", 1), line("C", 1)), ORIGINAL, [])

    assert refusal is not None
    assert (refusal.status, refusal.field) == (422, "lines.1.sku")
    assert "'C'" in refusal.reason


def test_earlier_returns_are_counted() -> None:
    earlier = [a_return(line("A", 1), sale_id="C1"), a_return(line("A", 1), line("B", 1), sale_id="C2")]

    too_many = check_return(a_return(line("A", 2), sale_id="C3"), ORIGINAL, earlier)
    exactly_the_rest = check_return(a_return(line("A", 1), sale_id="C3"), ORIGINAL, earlier)
    b_again = check_return(a_return(line("B", 1), sale_id="C3"), ORIGINAL, earlier)

    assert too_many is not None and too_many.field == "lines.0.quantity" and "only 1" in too_many.reason
    assert exactly_the_rest is None
    assert b_again is not None and "only 0" in b_again.reason


def test_returning_everything_that_was_sold_is_accepted() -> None:
    assert check_return(a_return(line("A", 3), line("B", 1)), ORIGINAL, []) is None


def test_a_return_whose_original_is_unknown_is_accepted() -> None:
    assert check_return(a_return(line("Z", 100)), None, []) is None
    assert check_return(a_return(line("Z", 100), original=None), ORIGINAL, []) is None


def test_a_return_of_a_return_is_refused() -> None:
    original_return = a_return(line("A", 3), sale_id="C0")

    refusal = check_return(a_return(line("A", 1), original="C0"), original_return, [])

    assert refusal is not None
    assert (refusal.status, refusal.field) == (422, "original_sale_id")
    assert "itself a return" in refusal.reason


# --- resubmission ------------------------------------------------------------------------------


def resubmit(stored: Sale, again: Sale) -> Any:
    return decide_resubmission(stored_terminal=stored.terminal_id, stored_fingerprint=fingerprint(stored),
                               stored_body=stored.model_dump(mode="json"), sale=again,
                               sale_fingerprint=fingerprint(again))


def test_the_same_sale_sent_again_is_a_replay() -> None:
    decision = resubmit(sale(), sale())

    assert decision.outcome == "replay"
    assert decision.refusal is None


def test_the_same_sale_written_differently_is_a_replay() -> None:
    again = sale(occurred_at="2024-05-01T12:00:00+02:00",
                 lines=[line("85123A", 6, "2.550"), line("71053", 2, "3.3900", discount="0.00")])

    assert resubmit(sale(), again).outcome == "replay"


def test_a_different_body_is_a_conflict_naming_the_first_difference() -> None:
    again = sale(lines=[line("85123A", 5), line("71053", 2, "3.39")])

    decision = resubmit(sale(), again)

    assert decision.outcome == "conflict"
    assert decision.refusal is not None
    assert (decision.refusal.status, decision.refusal.error, decision.refusal.field) == (409, "conflict",
                                                                                          "lines.0.quantity")


def test_a_conflict_on_a_top_level_field_names_it() -> None:
    decision = resubmit(sale(), sale(member_id="99999"))

    assert decision.refusal is not None and decision.refusal.field == "member_id"


def test_the_same_sale_id_from_another_terminal_is_a_conflict_on_sale_id() -> None:
    decision = resubmit(sale(terminal_id="till-3"), sale(terminal_id="till-4"))

    assert decision.outcome == "conflict"
    assert decision.refusal is not None
    assert (decision.refusal.status, decision.refusal.field) == (409, "sale_id")
    assert "till-3" in decision.refusal.reason


def test_a_changed_numeric_looking_sku_is_named_in_the_conflict() -> None:
    decision = resubmit(sale(lines=[line("1", 6)]), sale(lines=[line("01", 6)]))

    assert decision.refusal is not None and decision.refusal.field == "lines.0.sku"


# --- first_difference ---------------------------------------------------------------------------


@pytest.mark.parametrize("before,after,where", [
    ({"a": {"b": [1, {"c": 2}]}}, {"a": {"b": [1, {"c": 3}]}}, "a.b.1.c"),
    ({"a": 1, "b": {"x": [1, 2]}}, {"a": 1, "b": {"x": [1, 2, 3]}}, "b.x"),
    ({"a": 1}, {"a": 1, "z": "new"}, "z"),
    ({"a": 1, "z": "gone"}, {"a": 1}, "z"),
    ({"b": 1, "a": 1}, {"b": 2, "a": 2}, "a"),
    ({"unit_price": "1.50"}, {"unit_price": "1.51"}, "unit_price"),
    ({"a": [1]}, {"a": {"0": 1}}, "a"),
    ("x", "y", "body"),
])
def test_first_difference_names_the_path(before: Any, after: Any, where: str) -> None:
    assert first_difference(before, after) == where


@pytest.mark.parametrize("before,after", [
    ({"a": {"b": [1, {"c": "x"}]}}, {"a": {"b": [1, {"c": "x"}]}}),
    ({"unit_price": "1.50"}, {"unit_price": "1.5"}),
    ({}, {}),
])
def test_first_difference_finds_nothing_in_equal_documents(before: Any, after: Any) -> None:
    assert first_difference(before, after) is None


# --- live stats buckets and money units ----------------------------------------------------------


def test_a_24_hour_window_is_24_utc_hourly_buckets_ending_at_the_latest_hour() -> None:
    latest = datetime(2024, 5, 1, 1, 30, tzinfo=timezone(timedelta(hours=2)))  # 2024-04-30 23:30 UTC

    buckets = window_buckets(latest, 24)

    assert len(buckets) == len(set(buckets)) == 24
    assert max(buckets) == "2024043023"
    assert min(buckets) == "2024043000"
    assert sorted(buckets) == [f"20240430{hour:02d}" for hour in range(24)]


def test_a_window_crosses_a_month_boundary_in_utc() -> None:
    buckets = window_buckets(datetime(2024, 3, 1, 2, 0, tzinfo=UTC), 4)

    assert sorted(buckets) == ["2024022923", "2024030100", "2024030101", "2024030102"]


@pytest.mark.parametrize("amount", ["0.001", "12345.6789", "0", "-27.50", "0.0001", "999999999999.9999"])
def test_money_survives_the_trip_through_integer_units(amount: str) -> None:
    units = money_units(Decimal(amount))

    assert isinstance(units, int)
    assert units_to_money(units) == Decimal(amount)


def test_money_units_are_ten_thousandths() -> None:
    assert money_units(Decimal("0.001")) == 10
    assert money_units(Decimal("12345.6789")) == 123_456_789
    assert money_units(Decimal("0.001")) + money_units(Decimal("0.002")) == money_units(Decimal("0.003"))


def test_an_offer_code_is_part_of_the_sales_meaning() -> None:
    plain = sale(lines=[line("85123A", 6)])
    coded = sale(lines=[line("85123A", 6, offer_code="of-123")])
    assert fingerprint(plain) != fingerprint(coded)
