"""One batch of sales applied to stock one sale at a time, in the order the topic holds them. Pure: the
handler loads the locked rows and terms, this walks the sales, the handler saves what it decided.

Why one at a time: every decision (levels, low stock, a need and its quantity, the close of a store's
ordering cycle) is taken at the sale that triggers it, on the stock as it stood after that sale. So the
outcome depends on the sales and their order only, never on where a consumer batch happened to start
or end: a service killed and restarted mid-replay decides exactly what an uninterrupted run decides.
"""

from __future__ import annotations

import uuid
from collections import defaultdict, deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from crm_shared.events import Envelope, Sale, event_uuid
from crm_shared.supply_events import LowStock, low_stock_detected

from replenishment import SERVICE_NAME
from replenishment.domain import (
    DemandModel,
    Levels,
    Policy,
    Promotion,
    Terms,
    days_of_cover,
    is_low,
    max_order_units,
    order_quantity,
    po_id_for,
    record_demand,
    reorder_levels,
)

UNASSIGNED = Terms("unassigned")  # a sku the catalog has no terms for: forecast and levels, but no orders
StockKey = tuple[str, str]  # store, sku


def need_id_for(store_id: str, sku: str, cycle: date) -> uuid.UUID:
    return event_uuid(f"need/{store_id}/{sku}/{cycle.isoformat()}")


def low_stock_event(row: dict[str, Any], as_of: datetime, trigger: datetime) -> Envelope[Any]:
    """Identity: store, sku, the episode's day and the time of the sale that started it (an episode
    that ends and starts again the same day is a new event, not a repeat of the first)."""
    cover = days_of_cover(row["on_hand"], row["forecast_daily"]) or 0.0
    low = LowStock(store_id=row["store_id"], sku=row["sku"], on_hand=row["on_hand"], on_order=row["on_order"],
                   forecast_daily=round(row["forecast_daily"], 4), days_of_cover=round(cover, 2), as_of=as_of)
    return low_stock_detected(low, source=SERVICE_NAME,
                              identity=f"{row['store_id']}/{row['sku']}/{row['low_since'].isoformat()}/"
                                       f"{trigger.isoformat()}")


@dataclass(frozen=True)
class CycleClosed:
    """A store's sale of a later day closed its ordering cycles before `day`; `at` is that sale's time."""

    store_id: str
    day: date
    at: datetime


@dataclass
class StockLedger:
    """The walk over one batch. `rows` are the locked stock rows of every store × sku in the batch;
    `store_days` each store's event-time day before the batch (None for a store never seen);
    `models` their demand models; `raised` the (store, sku, cycle) needs already raised for the batch's
    keys from their store's day before the batch on."""

    policy: Policy
    rows: dict[StockKey, dict[str, Any]]
    terms: dict[str, tuple[Terms, Any]]
    promotions: dict[StockKey, tuple[Promotion, ...]]
    raised: set[tuple[str, str, date]]
    store_days: dict[str, date | None]
    models: dict[StockKey, DemandModel]
    needs: list[dict[str, Any]] = field(default_factory=list)
    low_stock: list[Envelope[Any]] = field(default_factory=list)
    closed: list[CycleClosed] = field(default_factory=list)
    lines: int = 0
    late_lines: int = 0
    _levels: dict[StockKey, tuple[tuple[date, int], Levels]] = field(default_factory=dict)

    def apply(self, sale: Sale) -> None:
        store_id, at, day = sale.store_id, sale.occurred_at, sale.occurred_at.date()
        today = self.store_days.get(store_id)
        if today is None or day > today:
            if today is not None:
                self.closed.append(CycleClosed(store_id, day, at))
            self.store_days[store_id] = today = day
        returning = sale.kind == "return"
        units: dict[str, int] = {}
        for line in sale.lines:
            sku, quantity = line.sku, line.quantity
            units[sku] = units.get(sku, 0) + quantity
        self.lines += len(sale.lines)
        rows, models = self.rows, self.models
        for sku, quantity in units.items():
            key = (store_id, sku)
            row = rows[key]
            if returning:
                row["on_hand"] += quantity
                row["returned"] += quantity
            else:
                row["on_hand"] -= quantity
                row["sold"] += quantity
            model, late = record_demand(models[key], day, -quantity if returning else quantity)
            models[key] = model
            if late:
                row["late_lines"] += 1
                self.late_lines += 1
            last = row["last_event_at"]
            if last is None or at > last:
                row["last_event_at"] = at
            if row["on_hand"] >= 0:
                row["negative_since"] = None
            elif row["negative_since"] is None:
                row["negative_since"] = at
            self._decide(key, row, model, today, at)

    def _decide(self, key: StockKey, row: dict[str, Any], model: DemandModel, today: date, at: datetime) -> None:
        store_id, sku = key
        sku_terms, unit_cost = self.terms.get(sku, (UNASSIGNED, None))
        levels = self._levels_at(key, row, model, sku_terms)
        if is_low(row["on_hand"], levels.forecast_daily, self.policy):
            if row["low_since"] is None:
                row["low_since"] = today
                self.low_stock.append(low_stock_event(row, at, at))
        else:
            row["low_since"] = None
        if sku_terms is UNASSIGNED or (store_id, sku, today) in self.raised:
            return  # no supplier to order from, or this cycle's need is raised already
        quantity = order_quantity(row["on_hand"], row["on_order"], levels, sku_terms)
        if quantity <= 0:
            return
        self.raised.add((store_id, sku, today))
        self.needs.append({
            "need_id": need_id_for(store_id, sku, today), "store_id": store_id, "sku": sku, "cycle": today,
            "supplier_id": sku_terms.supplier_id, "quantity": quantity, "pack_size": sku_terms.pack_size,
            "unit_cost": unit_cost, "lead_time_days": sku_terms.lead_time_days,
            "reorder_point": levels.reorder_point, "order_up_to": levels.order_up_to, "on_hand": row["on_hand"],
            "on_order": row["on_order"], "forecast_daily": levels.forecast_daily, "detected_at": at})
        row["on_order"] += quantity

    def _levels_at(self, key: StockKey, row: dict[str, Any], model: DemandModel, terms: Terms) -> Levels:
        """Levels as of the SKU's own newest sale day (its model's open day, set by the sale just
        recorded), from the days learned before it. A sale dated before its store's day (partitions are
        keyed by member and drift in event time: a third of a backlog's lines) is decided on what is
        known of its SKU at that day, not on the days up to the store's day rolled in as zeros: those
        days may still bring the SKU's sales from a partition behind. Levels change only when the open
        day or the learned days do: computed (and written to the row) once per such change, not at
        every sale of a busy SKU."""
        day = model.open_day
        assert day is not None  # record_demand has just recorded a sale
        stamp = (day, model.days_learned)
        known = self._levels.get(key)
        if known is not None and known[0] == stamp:
            return known[1]
        levels = reorder_levels(model, day, terms, self.policy, self.promotions.get(key, ()))
        self._levels[key] = (stamp, levels)
        row["forecast_daily"], row["sigma_daily"] = levels.forecast_daily, levels.sigma_daily
        row["reorder_point"], row["order_up_to"] = levels.reorder_point, levels.order_up_to
        return levels

    def rounds(self) -> list[list[CycleClosed]]:
        """The cycle closes, each store's in the order they happened: round n holds every store's n-th close
        (stores are independent, so one round's closes can share one pass over the needs)."""
        per_store: dict[str, list[CycleClosed]] = defaultdict(list)
        for close in self.closed:
            per_store[close.store_id].append(close)
        depth = max((len(closes) for closes in per_store.values()), default=0)
        return [[closes[n] for closes in per_store.values() if n < len(closes)] for n in range(depth)]


def daily_sales(sales: Sequence[Sale]) -> dict[tuple[str, str, date], list[int]]:
    """Units sold and handed back per store × SKU × the till's calendar day: the sell-through that
    suppliers read. Kept by its own consumer group (`stream.consumers`), off the path of stock decisions."""
    daily: dict[tuple[str, str, date], list[int]] = defaultdict(lambda: [0, 0])
    for sale in sales:
        store_id, day, returning = sale.store_id, sale.occurred_at.date(), sale.kind == "return"
        for line in sale.lines:
            daily[(store_id, line.sku, day)][returning] += line.quantity
    return daily


@dataclass(frozen=True)
class PlannedOrder:
    """A purchase order a cycle close raises: its needs oldest cycle first within a SKU."""

    po_id: str
    supplier_id: str
    store_id: str
    cycle: date  # the newest cycle of its needs
    raised_at: datetime  # the time of the sale that closed the cycle
    needs: tuple[Any, ...]


def plan_orders(rounds: list[list[CycleClosed]], pending: Sequence[Any], taken: Collection[str]) -> list[PlannedOrder]:
    """The purchase orders of a batch's cycle closes, round by round as they happened (`StockLedger.rounds`).
    At each close, the store's needs of the cycles before it that no earlier close put on an order become
    one order per supplier, its id derived from supplier, store and newest cycle (`po_id_for`). A line
    carries at most the contract's maximum: a need that would take its SKU's line over waits for a later
    close. An order whose id is `taken` (raised before this batch) or planned already in it is not raised,
    and its needs wait. `pending`: the needs not on an order, by store, supplier, sku and cycle."""
    place = {need.need_id: n for n, need in enumerate(pending)}
    # Per store: its needs by cycle, to be taken as closes pass them, and those a close left waiting.
    due_by_store: dict[str, deque[Any]] = defaultdict(deque)
    for need in sorted(pending, key=lambda n: n.cycle):  # stable: pending's order within a cycle
        due_by_store[need.store_id].append(need)
    waiting: dict[str, list[Any]] = {}
    ids = set(taken)
    on_order: set[Any] = set()  # need ids a planned order carries
    planned: list[PlannedOrder] = []
    for closes in rounds:
        for close in sorted(closes, key=lambda c: c.store_id):
            due, queue = waiting.pop(close.store_id, []), due_by_store[close.store_id]
            while queue and queue[0].cycle < close.day:
                due.append(queue.popleft())
            due.sort(key=lambda n: place[n.need_id])
            groups: dict[str, list[Any]] = defaultdict(list)
            line_units: dict[tuple[str, str], int] = defaultdict(int)
            for need in due:
                line = (need.supplier_id, need.sku)
                if line_units[line] + need.quantity > max_order_units(need.pack_size):
                    continue  # one line carries at most the contract's maximum: this need waits
                line_units[line] += need.quantity
                groups[need.supplier_id].append(need)
            for supplier_id, group in groups.items():
                cycle = max(n.cycle for n in group)
                po_id = po_id_for(supplier_id, close.store_id, cycle)
                if po_id in ids:
                    continue  # an order of that cycle exists: its needs wait for the next close
                ids.add(po_id)
                on_order.update(n.need_id for n in group)
                planned.append(PlannedOrder(po_id, supplier_id, close.store_id, cycle, close.at, tuple(group)))
            waiting[close.store_id] = [n for n in due if n.need_id not in on_order]
    return planned
