"""The pure decisions: forecasts in event time, reorder points, order quantities, the order lifecycle."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta

import pytest
from crm_shared.events import Product
from crm_shared.supplier_terms import products_from_sales, with_supplier_terms
from replenishment.domain import (
    DemandModel,
    Levels,
    Policy,
    Promotion,
    Refused,
    Terms,
    after,
    days_of_cover,
    is_low,
    order_quantity,
    outlook,
    overdue,
    po_id_for,
    receive,
    receive_late,
    record_demand,
    reorder_levels,
)
from replenishment.edifact import parse_order_lines, render_orders

MONDAY = date(2011, 1, 3)


def learned(daily: list[float], start: date = MONDAY) -> DemandModel:
    model = DemandModel()
    for offset, quantity in enumerate(daily):
        model, late = record_demand(model, start + timedelta(days=offset), quantity)
        assert not late
    return model


def test_steady_demand_is_forecast_and_its_error_shrinks() -> None:
    model = learned([10.0] * 30)
    day = MONDAY + timedelta(days=30)
    assert model.days_learned == 29  # the 30th day is still open: more of it may be sold
    assert model.forecast(day) == pytest.approx(10.0)
    assert model.sigma == pytest.approx(0.0)


def test_the_weekday_season_is_learned() -> None:
    # Busy Mondays (30), quiet other days (5): after ten weeks Monday's forecast stands well above Tuesday's.
    week = [30.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0]
    model = learned(week * 10 + [0.0])
    next_monday = MONDAY + timedelta(days=70)
    assert model.forecast(next_monday) > 20 > 8 > model.forecast(next_monday + timedelta(days=1))


def test_days_without_sales_are_learned_as_zeros_and_a_late_sale_is_counted_late_and_folded_in() -> None:
    model = learned([10.0] * 14)
    model, _ = record_demand(model, MONDAY + timedelta(days=30), 1.0)  # 16 silent days in between
    assert model.days_learned == 13 + 1 + 16  # the open day, then every silent day as a zero
    assert model.forecast(MONDAY + timedelta(days=31)) < 7.5
    model, late = record_demand(model, MONDAY + timedelta(days=20), 5.0)
    assert late and model.open_quantity == 6.0  # its units reach the model, on the open day
    model, late = record_demand(model, MONDAY + timedelta(days=25), -2.0)  # a late return nets too
    assert late and model.open_quantity == 4.0


def test_late_sales_of_a_drifting_partition_still_reach_the_forecast() -> None:
    # Two partitions a day apart in event time: every other sale arrives after its day was closed.
    # Dropping them (as before) halved the learned demand; folded in, the forecast nears 10 a day.
    model, late_lines = DemandModel(), 0
    for offset in range(60):
        day = MONDAY + timedelta(days=offset)
        model, late = record_demand(model, day, 5.0)
        late_lines += late
        if offset:
            model, late = record_demand(model, day - timedelta(days=1), 5.0)
            late_lines += late
    assert late_lines == 59
    dropped = learned([5.0] * 60)  # what the model saw when late lines were dropped
    assert dropped.forecast(MONDAY + timedelta(days=60)) == pytest.approx(5.0)
    assert model.forecast(MONDAY + timedelta(days=60)) > 9.0  # the first day had only one partition's 5


def test_a_same_day_return_nets_against_that_days_demand() -> None:
    model, _ = record_demand(DemandModel(), MONDAY, 80.0)
    model, _ = record_demand(model, MONDAY, -80.0)  # the order cancelled minutes later
    model, _ = record_demand(model, MONDAY + timedelta(days=1), 0.0)
    assert model.level == 0.0


def test_outlook_rolls_in_the_days_not_yet_seen() -> None:
    model = learned([10.0] * 21)
    assert outlook(model, MONDAY + timedelta(days=21), 3) == pytest.approx(30.0)
    after_a_month, after_two = outlook(model, MONDAY + timedelta(days=51), 3), outlook(model, MONDAY + timedelta(days=81), 3)
    assert after_two < after_a_month < 30.0 * 0.7  # a long silence: demand fades


def test_reorder_point_is_demand_over_lead_time_plus_safety_stock() -> None:
    week = [14.0, 6.0, 10.0, 10.0, 10.0, 12.0, 8.0]
    model = learned(week * 8 + [0.0])
    today = MONDAY + timedelta(days=56)
    terms = Terms("sup", pack_size=1, lead_time_days=4)
    policy = Policy(service_level_z=1.65, review_days=7)
    levels = reorder_levels(model, today, terms, policy)
    over_lead = sum(model.forecast(today + timedelta(days=i)) for i in range(4))
    assert levels.reorder_point == math.ceil(over_lead + 1.65 * model.sigma * 2)
    assert levels.reorder_point > over_lead  # a noisy sku carries safety stock
    assert levels.order_up_to >= levels.reorder_point + 7 * 8


def test_order_up_to_is_capped_by_the_shelf_but_stays_a_pack_above_the_reorder_point() -> None:
    model = learned([50.0] * 20)
    levels = reorder_levels(model, MONDAY + timedelta(days=20), Terms("sup", pack_size=12, lead_time_days=2,
                                                                      shelf_capacity=60), Policy())
    assert levels.reorder_point == 100 and levels.order_up_to == 112


def test_order_quantity_is_rounded_to_whole_packs_and_the_moq() -> None:
    levels = Levels(forecast_daily=10, sigma_daily=2, reorder_point=30, order_up_to=100)
    terms = Terms("sup", pack_size=12, min_order_quantity=50)
    assert order_quantity(31, 0, levels, terms) == 0  # above the reorder point
    assert order_quantity(20, 10, levels, terms) == 72  # 70 wanted → 6 packs
    assert order_quantity(95, -70, levels, terms) == 84  # 75 wanted → 7 packs
    assert order_quantity(90, -60, levels, terms) == 72
    assert order_quantity(29, 0, Levels(10, 2, 30, 35), terms) == 60  # 6 wanted, but the MOQ (50) in packs
    assert order_quantity(-40, 0, levels, terms) == 144  # negative stock: sold before it was booked in


def test_nothing_is_ordered_for_a_sku_nobody_buys() -> None:
    assert order_quantity(0, 0, Levels(0.0, 0.0, 0, 1), Terms("sup")) == 0


def test_days_of_cover_and_low_stock() -> None:
    assert days_of_cover(30, 10.0) == 3.0
    assert days_of_cover(-5, 10.0) == 0.0
    assert days_of_cover(30, 0.0) is None
    assert is_low(15, 10.0, Policy(low_cover_days=2)) and not is_low(25, 10.0, Policy(low_cover_days=2))


def test_the_order_lifecycle_refuses_what_does_not_apply() -> None:
    assert after("raised", "accepted") == "acknowledged"
    assert after("acknowledged", "accepted") == "acknowledged"  # the same answer twice changes nothing
    assert after("acknowledged", "ship") == "shipped"
    assert after("received", "close") == "closed"
    with pytest.raises(Refused) as refused:
        after("closed", "rejected")
    assert refused.value.status == 409 and refused.value.field == "status"
    with pytest.raises(Refused):
        after("rejected", "ship")


def test_partial_and_over_delivery() -> None:
    partial = receive({"A": 24, "B": 6}, {}, {"A": 20})
    assert partial.status == "partially_received" and partial.on_order_release == {"A": 20}
    rest = receive({"A": 24, "B": 6}, partial.received, {"A": 10, "B": 6, "Z": 1})
    assert rest.status == "received"
    assert rest.over_delivered == {"A": 6} and rest.unordered == {"Z": 1}
    assert rest.on_order_release == {"A": 4, "B": 6}  # never more than what was on order


def test_overdue_is_judged_in_event_time() -> None:
    due = datetime(2011, 1, 5, tzinfo=UTC)
    assert overdue("acknowledged", due, due + timedelta(hours=1))
    assert not overdue("received", due, due + timedelta(days=9))
    assert not overdue("raised", due, due - timedelta(hours=1))


def test_order_ids_name_supplier_store_and_cycle() -> None:
    cycle = date(2011, 1, 4)
    assert po_id_for("sup-a", "s1", cycle) == po_id_for("sup-a", "s1", cycle)
    assert po_id_for("sup-a", "s1", cycle) != po_id_for("sup-a", "s2", cycle)
    assert po_id_for("sup-a", "s1", cycle).startswith("po-20110104-")


def test_edifact_orders_parse_back_to_the_same_lines() -> None:
    order = {"po_id": "po-20110104-0123456789ab", "supplier_id": "mfr-69", "store_id": "cj-367",
             "raised_at": datetime(2011, 1, 4, 18, tzinfo=UTC), "expected_by": datetime(2011, 1, 7, 18, tzinfo=UTC),
             "lines": [{"sku": "1004906", "quantity": 24, "unit_cost": "1.15"},
                       {"sku": "85123A", "quantity": 6, "unit_cost": None}]}
    text = render_orders(order)
    assert "UNH+" in text and "ORDERS:D:96A:UN" in text and "BGM+220+po-20110104-0123456789ab+9" in text
    assert parse_order_lines(text) == [("1004906", 24), ("85123A", 6)]


def test_supplier_terms_are_deterministic_and_keep_what_the_data_says() -> None:
    product = Product(sku="1004906", manufacturer_id="69")
    first, second = with_supplier_terms(product), with_supplier_terms(product)
    assert first == second and first.supplier_id == "mfr-69"
    assert first.pack_size in (1, 6, 12, 24, 48) and first.min_order_quantity % first.pack_size == 0
    assert 1 <= first.lead_time_days <= 7 and first.shelf_capacity >= 4 * first.pack_size
    many = [Product(sku=str(n)) for n in range(200)]
    assert [with_supplier_terms(p) for p in many] != [with_supplier_terms(p, seed="other") for p in many]
    assert len({with_supplier_terms(p).supplier_id for p in many}) > 10  # spread over the suppliers
    kept = with_supplier_terms(Product(sku="X", supplier_id="acme", pack_size=10, lead_time_days=0))
    assert (kept.supplier_id, kept.pack_size, kept.lead_time_days) == ("acme", 10, 0)


def test_a_catalog_from_sales_costs_less_than_it_sells_for() -> None:
    from crm_shared.events import Sale

    sales = [Sale.model_validate({"sale_id": str(i), "store_id": "s", "terminal_id": "t", "currency": "GBP",
                                  "occurred_at": "2011-01-03T10:00:00+00:00",
                                  "lines": [{"sku": "A", "description": "LANTERN", "quantity": 1,
                                             "unit_price": price}]}) for i, price in enumerate(("2.00", "2.50", "9.00"))]
    (product,) = products_from_sales(sales)
    assert product.description == "LANTERN" and product.sku == "A"
    assert product.unit_cost is not None and 0 < product.unit_cost < 2.50  # 55-70 % of the median price
    assert product.supplier_id is not None and product.supplier_id.startswith("sup-")


def test_a_planned_campaign_raises_expected_demand_and_the_reorder_point_while_it_runs() -> None:
    model = learned([10.0] * 28)
    today = MONDAY + timedelta(days=28)
    terms, policy = Terms("sup", lead_time_days=2), Policy(units_per_offer=0.5)
    campaign = Promotion(today, today + timedelta(days=4), offers=100)  # 100 offers x 0.5 units over 5 days
    plain = reorder_levels(model, today, terms, policy)
    promoted = reorder_levels(model, today, terms, policy, (campaign,))
    assert promoted.forecast_daily == pytest.approx(plain.forecast_daily + 10.0)
    assert promoted.reorder_point == plain.reorder_point + 20
    over = Promotion(today - timedelta(days=9), today - timedelta(days=1), offers=100)
    assert reorder_levels(model, today, terms, policy, (over,)) == plain  # a finished campaign adds nothing


def test_one_first_day_is_no_forecast_and_an_order_line_stays_within_the_contract() -> None:
    from replenishment.domain import MAX_ORDER_QUANTITY, max_order_units

    model, _ = record_demand(DemandModel(), MONDAY, 1_000_000.0)
    assert model.forecast(MONDAY) == 0.0  # one lump × the lead time ordered millions
    terms = Terms("sup", pack_size=6, min_order_quantity=12, lead_time_days=7)
    levels = reorder_levels(model, MONDAY, terms, Policy())
    assert levels.reorder_point == 0
    quantity = order_quantity(-1_000_000, 0, levels, terms)  # the missing stock is still ordered ...
    assert quantity == max_order_units(6) == 999_996 <= MAX_ORDER_QUANTITY  # ... in whole packs, within a line
    model, _ = record_demand(model, MONDAY + timedelta(days=1), 3.0)
    assert model.forecast(MONDAY + timedelta(days=1)) == 1_000_000.0  # a learned day is a forecast again


def test_goods_after_the_order_is_done_with_are_booked_as_over_delivery_without_on_order_release() -> None:
    for status in ("received", "closed", "rejected"):
        outcome = receive_late(status, {"A": 10, "B": 5}, {"A": 10, "B": 2}, {"A": 3, "Z": 1})
        assert outcome.status == status  # the order's state stays
        assert outcome.received == {"A": 13, "B": 2, "Z": 1}
        assert outcome.over_delivered == {"A": 3} and outcome.unordered == {"Z": 1}
        assert outcome.on_order_release == {}  # settled when it completed, closed or was rejected
