"""The stock ledger decides the same whatever the consumer batches: real sales of December 2010, applied
in one batch and in batches cut at random places, carry the same stock, levels, needs, low-stock
episodes and cycle closes. (Before the ledger, needs were decided on the stock at the end of a batch.)"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from crm_shared.datasets.online_retail import load_sales
from crm_shared.events import Sale
from crm_shared.supplier_terms import products_from_sales
from crm_shared.testing import REPO_ROOT
from replenishment.domain import MAX_ORDER_QUANTITY, DemandModel, Policy, Terms, po_id_for
from replenishment.ledger import CycleClosed, StockLedger, daily_sales, plan_orders
from replenishment.store import model_columns, model_of, new_stock_row

SLICE = REPO_ROOT / "deploy" / "demo-data" / "online_retail_2010-12.csv.gz"


class Stored:
    """What the database holds between two batches, as far as the ledger is concerned."""

    def __init__(self, terms: dict[str, tuple[Terms, Any]]) -> None:
        self.terms = terms
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}
        self.store_days: dict[str, date | None] = {}
        self.needs: list[dict[str, Any]] = []
        self.low_stock: list[str] = []
        self.closed: list[tuple[str, date]] = []

    def apply(self, batch: list[Sale]) -> None:
        keys = {(s.store_id, line.sku) for s in batch for line in s.lines}
        rows = {key: dict(self.rows.get(key) or new_stock_row(*key)) for key in keys}
        ledger = StockLedger(Policy(), rows, self.terms, {},
                             {(n["store_id"], n["sku"], n["cycle"]) for n in self.needs},
                             {s.store_id: self.store_days.get(s.store_id) for s in batch},
                             {key: model_of(row) for key, row in rows.items()})
        for sale in batch:
            ledger.apply(sale)
        for key, model in ledger.models.items():
            rows[key].update(model_columns(model))
        self.rows.update(rows)
        self.store_days.update(ledger.store_days)
        self.needs += ledger.needs
        self.low_stock += [str(e.event_id) for e in ledger.low_stock]
        self.closed += [(c.store_id, c.day) for c in ledger.closed]


def replayed(sales: list[Sale], cuts: list[int], terms: dict[str, tuple[Terms, Any]]) -> Stored:
    stored = Stored(terms)
    for start, end in zip([0, *cuts], [*cuts, len(sales)], strict=True):
        stored.apply(sales[start:end])
    return stored


@pytest.fixture(scope="module")
def december() -> tuple[list[Sale], dict[str, tuple[Terms, Any]]]:
    sales = load_sales(SLICE)[0][:1_500]
    terms = {p.sku: (Terms(p.supplier_id or "none", p.pack_size or 1, p.min_order_quantity or 1,
                           p.lead_time_days if p.lead_time_days is not None else 2, p.shelf_capacity), p.unit_cost)
             for p in products_from_sales(sales) if p.supplier_id}
    return sales, terms


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_batches_cut_anywhere_decide_what_one_batch_decides(
        december: tuple[list[Sale], dict[str, tuple[Terms, Any]]], seed: int) -> None:
    sales, terms = december
    whole = replayed(sales, [], terms)
    cuts = sorted(random.Random(seed).sample(range(1, len(sales)), 60))
    cut = replayed(sales, cuts, terms)
    assert len(whole.needs) > 100 and len(whole.low_stock) > 100 and len(whole.closed) > 10, \
        "the slice must raise needs, low stock and closes for the comparison to mean anything"
    assert cut.rows == whole.rows
    assert cut.needs == whole.needs
    assert cut.low_stock == whole.low_stock
    assert cut.closed == whole.closed


def test_a_later_day_closes_the_cycle_and_a_late_sale_does_not() -> None:
    terms = {"A": (Terms("sup", lead_time_days=1), None)}
    first, second = (Sale.model_validate({
        "sale_id": f"s{d}", "store_id": "s1", "terminal_id": "t", "occurred_at": f"2011-01-0{d}T10:00:00+00:00",
        "currency": "GBP", "lines": [{"sku": "A", "quantity": 4, "unit_price": "1.00"}]}) for d in (3, 4))
    late = first.model_copy(update={"sale_id": "late"})
    rows = {("s1", "A"): new_stock_row("s1", "A")}
    ledger = StockLedger(Policy(), rows, terms, {}, set(), {"s1": None}, {("s1", "A"): DemandModel()})
    for sale in (first, second, late):
        ledger.apply(sale)
    assert [(c.store_id, c.day, c.at) for c in ledger.closed] == [("s1", date(2011, 1, 4), second.occurred_at)]
    assert [n["cycle"] for n in ledger.needs] == [date(2011, 1, 3), date(2011, 1, 4)]  # one need per cycle
    assert rows[("s1", "A")]["on_hand"] == -12 and ledger.late_lines == 1
    assert rows[("s1", "A")]["on_order"] == sum(n["quantity"] for n in ledger.needs)


def test_sell_through_counts_units_sold_and_returned_per_store_sku_and_till_day() -> None:
    def sale(sale_id: str, store: str, at: str, lines: list[tuple[str, int]], kind: str = "sale") -> Sale:
        return Sale.model_validate({
            "sale_id": sale_id, "store_id": store, "terminal_id": "t", "occurred_at": at, "currency": "GBP",
            "kind": kind, "lines": [{"sku": sku, "quantity": q, "unit_price": "1.00"} for sku, q in lines]})

    sales = [sale("1", "s1", "2011-01-03T09:00:00+00:00", [("A", 2), ("A", 3), ("B", 1)]),
             sale("2", "s1", "2011-01-03T18:00:00+00:00", [("A", 1)], kind="return"),
             sale("3", "s2", "2011-01-03T10:00:00+00:00", [("A", 4)]),
             # the till's own calendar day: 00:30 on 4 January in Paris is still 3 January in UTC
             sale("4", "s1", "2011-01-04T00:30:00+01:00", [("A", 7)])]
    assert dict(daily_sales(sales)) == {("s1", "A", date(2011, 1, 3)): [5, 1], ("s1", "B", date(2011, 1, 3)): [1, 0],
                                        ("s2", "A", date(2011, 1, 3)): [4, 0], ("s1", "A", date(2011, 1, 4)): [7, 0]}


def test_orders_are_planned_close_by_close_and_a_capped_or_taken_order_leaves_its_needs_waiting() -> None:
    def need(name: str, store_id: str, sku: str, day: int, quantity: int, supplier: str = "sup") -> SimpleNamespace:
        return SimpleNamespace(need_id=name, store_id=store_id, supplier_id=supplier, sku=sku,
                               cycle=date(2011, 1, day), quantity=quantity, pack_size=1)

    def close(store_id: str, day: int) -> CycleClosed:
        return CycleClosed(store_id, date(2011, 1, day), datetime(2011, 1, day, 9, tzinfo=UTC))

    # As store.needs_to_order gives them: by store, supplier, sku and cycle.
    pending = [need("b3", "s1", "B", 3, 1, "other"), need("a3", "s1", "A", 3, 5), need("a4", "s1", "A", 4, 6),
               need("big3", "s2", "C", 3, MAX_ORDER_QUANTITY - 10), need("big4", "s2", "C", 4, 20)]
    rounds = [[close("s2", 4), close("s1", 4)], [close("s1", 5), close("s2", 5)]]
    planned = plan_orders(rounds, pending, taken=set())
    # Round 1 closes each store's cycle 3 (one order per supplier), round 2 their cycle 4: by then s2's
    # big need of cycle 3 is on round 1's order, so cycle 4's fits on a line of its own.
    assert [(p.store_id, p.supplier_id, p.cycle, [n.need_id for n in p.needs], p.raised_at.day) for p in planned] == [
        ("s1", "other", date(2011, 1, 3), ["b3"], 4), ("s1", "sup", date(2011, 1, 3), ["a3"], 4),
        ("s2", "sup", date(2011, 1, 3), ["big3"], 4),
        ("s1", "sup", date(2011, 1, 4), ["a4"], 5), ("s2", "sup", date(2011, 1, 4), ["big4"], 5)]
    assert [p.po_id for p in planned] == [po_id_for(p.supplier_id, p.store_id, p.cycle) for p in planned]

    # Both of s2's needs due at one close: the second would take the line over the maximum and waits.
    capped = plan_orders([[close("s2", 5)]], pending[3:], taken=set())
    assert [[n.need_id for n in p.needs] for p in capped] == [["big3"]]

    # An order of that supplier, store and cycle exists already: not raised again, its needs wait, and
    # a later close that brings a newer need of that supplier takes them along.
    taken = {po_id_for("sup", "s1", date(2011, 1, 3))}
    again = plan_orders([[close("s1", 4)], [close("s1", 5)]], pending[1:3], taken)
    assert [(p.cycle, [n.need_id for n in p.needs]) for p in again] == [(date(2011, 1, 4), ["a3", "a4"])]
