"""Pure replenishment decisions: daily demand forecasts, reorder points, order quantities, the
purchase-order lifecycle. No I/O, no clock: event time comes in as an argument."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from itertools import chain, repeat
from typing import Any, Literal, NamedTuple

from crm_shared.events import MAX_QUANTITY

# Smoothing weights chosen by bench/forecast_accuracy.py on Online Retail's top 200 SKUs.
ALPHA = 0.02  # level (lumpy wholesale demand: the long-run level predicts best)
GAMMA = 0.1  # weekday seasonal terms
BETA = 0.05  # the running error statistics
MAX_GAP_DAYS = 400  # zero-demand days folded in one go; older history has decayed to nothing anyway


class DemandModel(NamedTuple):
    """Additive exponential smoothing with a weekday season, learned one event-time day at a time.

    `open_day` accumulates the units of the newest day a sale was seen for; it is learned when a
    later day shows up (days with no sale in between are learned as zeros). A sale dated before
    `open_day` (sales are keyed by member, so partitions drift in event time) is folded into the
    open day, its units are demand all the same, and counted as late.
    """

    level: float = 0.0
    season: tuple[float, ...] = (0.0,) * 7
    days_learned: int = 0
    error_square: float = 0.0  # running mean of squared one-day-ahead errors
    error_abs: float = 0.0  # running mean of absolute one-day-ahead errors
    actual_abs: float = 0.0  # running mean of daily demand: error_abs / actual_abs is the running WAPE
    open_day: date | None = None
    open_quantity: float = 0.0

    def forecast(self, day: date) -> float:
        """Expected units on `day` (a day not yet learned)."""
        if self.days_learned == 0:
            # One (partial) day is no forecast: a single lump × the lead time ordered millions on a
            # SKU's first day. Until a day is learned, stock is ordered only to cover what is missing.
            return 0.0
        return max(0.0, self.level + self.season[day.weekday()])

    @property
    def sigma(self) -> float:
        """Standard deviation of one day's forecast error; Poisson-like while the model is young."""
        poisson = math.sqrt(max(self.level, 0.0))
        if self.days_learned < 14:
            return max(poisson, math.sqrt(self.error_square))
        return math.sqrt(self.error_square)

    @property
    def wape(self) -> float | None:
        return self.error_abs / self.actual_abs if self.actual_abs > 0 else None


def learn_day(model: DemandModel, day: date, quantity: float, *, alpha: float = ALPHA,
              gamma: float = GAMMA) -> DemandModel:
    """One day's demand, learned after the error of the forecast made for it is tracked."""
    return learn_days(model, day, (quantity,), alpha=alpha, gamma=gamma)


Learned = tuple[float, tuple[float, ...], int, float, float, float]  # a model's first six fields


def learn_days(model: DemandModel, first: date, quantities: Iterable[float], *, alpha: float = ALPHA,
               gamma: float = GAMMA) -> DemandModel:
    """Consecutive days from `first`, learned one after the other."""
    return DemandModel(*_learned(model[:6], first, quantities, alpha, gamma), model.open_day, model.open_quantity)


def _learned(state: tuple[Any, ...], first: date, quantities: Iterable[float], alpha: float = ALPHA,
             gamma: float = GAMMA) -> Learned:
    """The hot path of learning (every sale of a new day rolls a model): plain floats in the loop,
    the learned fields returned as they are, a model built once by the caller."""
    level, season_, learned, error_square, error_abs, actual_abs = state
    season = list(season_)
    weekday = first.weekday()
    keep = gamma * (1 - alpha)
    for quantity in quantities:
        if learned == 0:
            level, learned, actual_abs = quantity, 1, quantity
        else:
            base = level + season[weekday]
            error = quantity - (base if base > 0.0 else 0.0)
            level += alpha * (quantity - base)
            season[weekday] += keep * (quantity - base)
            learned += 1
            error_square += BETA * (error * error - error_square)
            error_abs += BETA * ((error if error >= 0 else -error) - error_abs)
            actual_abs += BETA * (quantity - actual_abs)
        weekday = 0 if weekday == 6 else weekday + 1
    return level, tuple(season), learned, error_square, error_abs, actual_abs


def roll_to(model: DemandModel, day: date) -> DemandModel:
    """Learn every complete day before `day`: the open day, then zeros for the days without a sale."""
    open_day = model.open_day
    if open_day is None or day <= open_day:
        return model
    gap = (day - open_day).days - 1
    if gap <= MAX_GAP_DAYS:  # the open day and the quiet days after it, in one pass (every new day of a SKU)
        state = _learned(model[:6], open_day, chain((model.open_quantity,), repeat(0.0, gap)) if gap > 0
                         else (model.open_quantity,))
    else:
        state = _learned(_learned(model[:6], open_day, (model.open_quantity,)), day - timedelta(days=MAX_GAP_DAYS),
                         repeat(0.0, MAX_GAP_DAYS))
    return DemandModel(*state, day, 0.0)


def record_demand(model: DemandModel, day: date, quantity: float) -> tuple[DemandModel, bool]:
    """Units sold (or, negative, handed back) on `day`. Returns the model and whether it was late."""
    open_day = model.open_day
    if open_day is None:
        return DemandModel(*model[:6], day, max(0.0, quantity)), False
    if day < open_day:  # late: its day is learned already, its units still count, on the open day
        return DemandModel(*model[:6], open_day, max(0.0, model.open_quantity + quantity)), True
    if day > open_day:
        model = roll_to(model, day)
    # A return the same day nets against that day's demand (a cancelled order was never demand).
    return DemandModel(*model[:6], day, max(0.0, model.open_quantity + quantity)), False


def outlook(model: DemandModel, today: date, days: int) -> float:
    """Units expected over `days` days from `today`, the days not yet learned rolled in as they stand."""
    rolled = roll_to(model, today)
    return sum(rolled.forecast(today + timedelta(days=i)) for i in range(days))


# --- reorder points and order quantities ------------------------------------------------------

@dataclass(frozen=True)
class Terms:
    supplier_id: str
    pack_size: int = 1
    min_order_quantity: int = 1
    lead_time_days: int = 2
    shelf_capacity: int | None = None


@dataclass(frozen=True)
class Policy:
    # Chosen by bench/replenishment_policy.py: ordering every cycle up to one day of demand above the
    # reorder point beats a static min/max on fill rate AND stock; more cover buys little fill per unit.
    service_level_z: float = 1.0
    review_days: int = 1  # order-up-to covers the lead time plus this many days
    low_cover_days: float = 2.0  # fewer days of cover than this is published as low stock
    units_per_offer: float = 0.2  # extra units one issued offer is expected to sell over its validity


class Levels(NamedTuple):  # built at most sales of a new day: a tuple, not a frozen dataclass, for speed
    forecast_daily: float
    sigma_daily: float
    reorder_point: int
    order_up_to: int


@dataclass(frozen=True)
class Promotion:
    """Offers of a SKU valid from `first_day` to `last_day` (inclusive): each is expected to sell
    `Policy.units_per_offer` extra units, spread evenly over its days."""

    first_day: date
    last_day: date
    offers: int

    def extra_on(self, day: date, units_per_offer: float) -> float:
        if not self.first_day <= day <= self.last_day:
            return 0.0
        return self.offers * units_per_offer / ((self.last_day - self.first_day).days + 1)


def expected_demand(model: DemandModel, day: date, promotions: tuple[Promotion, ...], policy: Policy) -> float:
    """The forecast for `day` plus what planned campaigns are expected to add on it."""
    if not promotions:
        return model.forecast(day)
    return model.forecast(day) + sum(p.extra_on(day, policy.units_per_offer) for p in promotions)


def reorder_levels(model: DemandModel, today: date, terms: Terms, policy: Policy,
                   promotions: tuple[Promotion, ...] = ()) -> Levels:
    """Reorder point = expected demand over the lead time + z·σ·√L; order-up-to adds `review_days`
    of demand on top, capped by the shelf (but always at least one pack above the reorder point).
    Expected demand = the forecast plus the uplift of campaigns planned on those days."""
    lead = max(terms.lead_time_days, 0)
    rolled = roll_to(model, today)
    daily = _expected_days(rolled, today, max(lead + policy.review_days, 1), promotions, policy)
    over_lead = sum(daily[:lead])
    sigma = rolled.sigma
    safety = policy.service_level_z * sigma * math.sqrt(lead)
    reorder_point = math.ceil(over_lead + safety - 1e-9)
    review = sum(daily[lead:lead + policy.review_days])
    order_up_to = math.ceil(over_lead + safety + review - 1e-9)
    if terms.shelf_capacity is not None:
        order_up_to = min(order_up_to, terms.shelf_capacity)
    order_up_to = max(order_up_to, reorder_point + terms.pack_size)
    return Levels(daily[0], sigma, reorder_point, order_up_to)


def _expected_days(model: DemandModel, first: date, days: int, promotions: tuple[Promotion, ...],
                   policy: Policy) -> list[float]:
    """`expected_demand` of `days` days from `first` (levels are computed at most sales: the plain
    forecast without campaigns, the usual case, is read off the weekday season directly)."""
    if promotions:
        return [expected_demand(model, first + timedelta(days=i), promotions, policy) for i in range(days)]
    if model.days_learned == 0:
        return [0.0] * days
    level, season, weekday = model.level, model.season, first.weekday()
    return [base if (base := level + season[(weekday + i) % 7]) > 0.0 else 0.0 for i in range(days)]


MAX_ORDER_QUANTITY = MAX_QUANTITY  # crm_shared.supply_events.OrderLine.quantity's maximum


def max_order_units(pack_size: int) -> int:
    """The most units one order line may carry: whole packs within the order contract's maximum."""
    pack = max(pack_size, 1)
    return MAX_ORDER_QUANTITY // pack * pack


def order_quantity(on_hand: int, on_order: int, levels: Levels, terms: Terms) -> int:
    """0 while the stock position is above the reorder point; else up to order-up-to, in whole packs,
    at least the minimum order quantity (itself rounded up to whole packs), at most what one order
    line may carry (`max_order_units`): the rest is ordered in the next cycles."""
    position = on_hand + on_order
    if position > levels.reorder_point or (levels.forecast_daily <= 0 and levels.reorder_point <= 0 and position >= 0):
        return 0
    wanted = max(levels.order_up_to - position, 1)
    pack = max(terms.pack_size, 1)
    minimum = math.ceil(max(terms.min_order_quantity, 1) / pack) * pack
    return min(max(math.ceil(wanted / pack) * pack, minimum), max_order_units(pack))


def days_of_cover(on_hand: int, forecast_daily: float) -> float | None:
    """Days the stock on hand lasts at the forecast rate; None when nothing is expected to sell."""
    if forecast_daily <= 0:
        return None
    return max(on_hand, 0) / forecast_daily


def is_low(on_hand: int, forecast_daily: float, policy: Policy) -> bool:
    cover = days_of_cover(on_hand, forecast_daily)
    return cover is not None and cover < policy.low_cover_days


# --- the purchase-order lifecycle -------------------------------------------------------------

Status = Literal["raised", "acknowledged", "rejected", "shipped", "partially_received", "received", "closed"]
OPEN_STATUSES: tuple[Status, ...] = ("raised", "acknowledged", "shipped", "partially_received")


class Refused(Exception):
    """A command that breaks a rule: HTTP status, error code, the field, why."""

    def __init__(self, status: int, error: str, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.status, self.error, self.field, self.reason = status, error, field, reason


ALLOWED: dict[str, tuple[Status, ...]] = {
    "accepted": ("raised",),
    "rejected": ("raised",),
    "ship": ("raised", "acknowledged"),
    "receive": ("raised", "acknowledged", "shipped", "partially_received"),
    "close": ("raised", "acknowledged", "rejected", "shipped", "partially_received", "received"),
}


def after(status: Status, action: str) -> Status:
    """The status an order moves to, or `Refused` (409) when the action does not apply to it now.
    Repeating the action that led to the current status is allowed (idempotent) and changes nothing."""
    repeats = {"accepted": "acknowledged", "rejected": "rejected", "ship": "shipped", "close": "closed"}
    if repeats.get(action) == status:
        return status
    if status not in ALLOWED[action]:
        raise Refused(409, "conflict", "status", f"order is {status}: cannot {action.removesuffix('ed')}")
    return {"accepted": "acknowledged", "rejected": "rejected", "ship": "shipped", "close": "closed"}.get(
        action, status)  # type: ignore[return-value]


@dataclass(frozen=True)
class ReceiptOutcome:
    received: dict[str, int]  # per sku, the total received so far
    over_delivered: dict[str, int]  # per sku, units beyond what was ordered (accepted, flagged)
    unordered: dict[str, int]  # skus delivered that the order does not have
    on_order_release: dict[str, int]  # per sku, how much of the on-order quantity this receipt settles
    status: Status


def receive(ordered: dict[str, int], received_before: dict[str, int], delivered: dict[str, int]) -> ReceiptOutcome:
    """A (partial) delivery against an order: more than ordered is accepted and flagged, never hidden."""
    received = dict(received_before)
    release: dict[str, int] = {}
    for sku, units in delivered.items():
        before = received.get(sku, 0)
        received[sku] = before + units
        if sku in ordered:
            release[sku] = max(0, min(ordered[sku], before + units) - min(ordered[sku], before))
    over = {sku: received[sku] - ordered[sku] for sku in ordered if received.get(sku, 0) > ordered[sku]}
    unordered = {sku: received[sku] for sku in received if sku not in ordered}
    complete = all(received.get(sku, 0) >= units for sku, units in ordered.items())
    return ReceiptOutcome(received, over, unordered, release, "received" if complete else "partially_received")


EXPECTS_NO_GOODS: tuple[Status, ...] = ("received", "closed", "rejected")


def receive_late(status: Status, ordered: dict[str, int], received_before: dict[str, int],
                 delivered: dict[str, int]) -> ReceiptOutcome:
    """Goods for an order that expects none any more (received, closed or rejected) are physical stock:
    booked all the same, every unit flagged as over-delivered, nothing released from on-order (that was
    settled when the order completed, closed or was rejected), and the status stays."""
    received = dict(received_before)
    for sku, units in delivered.items():
        received[sku] = received.get(sku, 0) + units
    over = {sku: units for sku, units in delivered.items() if sku in ordered}
    unordered = {sku: received[sku] for sku in received if sku not in ordered}
    return ReceiptOutcome(received, over, unordered, {}, status)


def overdue(status: str, expected_by: datetime, now: datetime) -> bool:
    return status in OPEN_STATUSES and now > expected_by


def po_id_for(supplier_id: str, store_id: str, cycle: date) -> str:
    import hashlib

    digest = hashlib.sha256(f"{supplier_id}/{store_id}/{cycle.isoformat()}".encode()).hexdigest()[:12]
    return f"po-{cycle:%Y%m%d}-{digest}"
