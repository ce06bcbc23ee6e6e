"""Loyalty decisions: points earned and reversed, lots spent first-to-expire, tiers by rolling spend.

Pure: no I/O, no clock. Points are whole numbers; a balance is never negative.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_FLOOR, Decimal

from crm_shared.events import Sale, Tier

TIER_ORDER: tuple[Tier, ...] = ("member", "silver", "gold", "vip")


@dataclass(frozen=True)
class LoyaltyRules:
    points_per_unit: Decimal = Decimal("1")                    # points per currency unit of net spend
    category_multipliers: Mapping[str, Decimal] = field(default_factory=dict)
    expiry_days: int = 365                                      # event-time days a point lives
    tier_thresholds: Mapping[Tier, Decimal] = field(default_factory=lambda: {
        "silver": Decimal("500"), "gold": Decimal("2000"), "vip": Decimal("10000")})
    tier_window_days: int = 365


def points_for(sale: Sale, rules: LoyaltyRules, category_of: Callable[[str], str | None] = lambda _: None) -> int:
    """Points a sale earns (or a return takes back): net line value × category multiplier × rate, floored."""
    value = Decimal("0")
    for line in sale.lines:
        category = category_of(line.sku)
        multiplier = rules.category_multipliers.get(category, Decimal("1")) if category else Decimal("1")
        value += line.net * multiplier
    points = (value * rules.points_per_unit).to_integral_value(rounding=ROUND_FLOOR)
    return max(0, int(points))


@dataclass(frozen=True)
class Lot:
    """Points earned together, spent together: they expire on the same day."""

    lot_id: int
    remaining: int
    expires_at: datetime
    earned_at: datetime | None = None  # None: held at any time


class NotEnoughPoints(Exception):
    def __init__(self, asked: int, balance: int) -> None:
        super().__init__(f"asked for {asked} points; the balance is {balance}")
        self.asked, self.balance = asked, balance


def expires_at(earned_at: datetime, rules: LoyaltyRules) -> datetime:
    return earned_at + timedelta(days=rules.expiry_days)


def live_lots(lots: Sequence[Lot], as_of: datetime) -> list[Lot]:
    return sorted((lot for lot in lots if lot.remaining > 0 and lot.expires_at > as_of),
                  key=lambda lot: (lot.expires_at, lot.lot_id))


def balance(lots: Sequence[Lot], as_of: datetime) -> int:
    return sum(lot.remaining for lot in live_lots(lots, as_of))


def expired(lots: Sequence[Lot], as_of: datetime) -> list[tuple[int, int]]:
    """(lot, points) that lapse at `as_of`: event time, so a replay lapses them on the same day."""
    return [(lot.lot_id, lot.remaining) for lot in lots if lot.remaining > 0 and lot.expires_at <= as_of]


def spend(lots: Sequence[Lot], points: int, as_of: datetime) -> list[tuple[int, int]]:
    """Take `points` from the lots that expire first; refuse rather than go negative."""
    available = balance(lots, as_of)
    if points > available:
        raise NotEnoughPoints(points, available)
    taken: list[tuple[int, int]] = []
    left = points
    for lot in live_lots(lots, as_of):
        if left == 0:
            break
        take = min(lot.remaining, left)
        taken.append((lot.lot_id, take))
        left -= take
    return taken


def take_back(lots: Sequence[Lot], points: int, at: datetime) -> list[tuple[int, int]]:
    """A return takes back what it earned, as far as the balance at its own time `at` allows (never
    below zero). Lots earned after the return are not touched, so what it takes back does not depend
    on which later sales were applied in the same consumer batch."""
    held = [lot for lot in lots if lot.earned_at is None or lot.earned_at <= at]
    return spend(held, min(points, balance(held, at)), at)


def tier_for(rolling_spend: Decimal, rules: LoyaltyRules) -> Tier:
    reached: Tier = "member"
    for tier in TIER_ORDER[1:]:
        threshold = rules.tier_thresholds.get(tier)
        if threshold is not None and rolling_spend >= threshold:
            reached = tier
    return reached

