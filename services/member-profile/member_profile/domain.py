"""member-profile's decisions: how a sale or a return changes a member's profile. No I/O, no clock.

Event time only: recency is measured to the latest event time the service has seen (`as_of`),
never to the wall clock, so replaying 2010 gives the answers 2010 gave.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from crm_shared.events import Sale

ZERO = Decimal("0")


@dataclass(frozen=True)
class Rhythm:
    """Days between visits (a visit = a day with at least one purchase), kept with Welford's method."""

    last_visit_day: date | None = None
    intervals: int = 0
    mean_days: float = 0.0
    m2: float = 0.0

    @property
    def spread_days(self) -> float:
        return math.sqrt(self.m2 / (self.intervals - 1)) if self.intervals > 1 else 0.0

    def after_visit(self, day: date) -> Rhythm:
        if self.last_visit_day is None:
            return replace(self, last_visit_day=day)
        if day <= self.last_visit_day:
            return self  # same day, or an earlier one (see `rhythm_of`: out-of-order visits rebuild it)
        gap = (day - self.last_visit_day).days
        count = self.intervals + 1
        delta = gap - self.mean_days
        mean = self.mean_days + delta / count
        return Rhythm(day, count, mean, self.m2 + delta * (gap - mean))


def rhythm_of(visit_days: Iterable[date]) -> Rhythm:
    rhythm = Rhythm()
    for day in sorted(set(visit_days)):
        rhythm = rhythm.after_visit(day)
    return rhythm


@dataclass(frozen=True)
class Profile:
    member_id: str
    first_purchase_at: datetime | None = None
    last_purchase_at: datetime | None = None
    frequency: int = 0                 # distinct sales
    returns: int = 0                   # distinct returns
    monetary: Decimal = ZERO           # net of returns
    gross_sales: Decimal = ZERO        # sales only, before returns
    items_bought: int = 0
    lines_bought: int = 0
    items_returned: int = 0
    items_on_discount: int = 0
    discount_total: Decimal = ZERO
    store_visits: Mapping[str, int] = field(default_factory=dict)
    hour_of_day: Mapping[str, int] = field(default_factory=dict)   # local hour of the till -> sales
    weekday: Mapping[str, int] = field(default_factory=dict)       # 0 = Monday -> sales
    rhythm: Rhythm = Rhythm()
    rhythm_needs_rebuild: bool = False
    category_items: Mapping[str, int] = field(default_factory=dict)  # items bought per catalog category
    brand_items: Mapping[str, int] = field(default_factory=dict)     # items bought per brand (e.g. National/Private)

    @property
    def average_basket_value(self) -> Decimal:
        return (self.gross_sales / self.frequency).quantize(Decimal("0.01")) if self.frequency else ZERO

    @property
    def average_basket_size(self) -> float:
        return self.items_bought / self.frequency if self.frequency else 0.0

    @property
    def returns_rate(self) -> float:
        """Share of items bought that came back."""
        return self.items_returned / self.items_bought if self.items_bought else 0.0

    @property
    def discount_share(self) -> float:
        """Price sensitivity: the share of items bought on a line discount."""
        return self.items_on_discount / self.items_bought if self.items_bought else 0.0

    @property
    def preferred_store(self) -> str | None:
        if not self.store_visits:
            return None
        return min(self.store_visits.items(), key=lambda item: (-item[1], item[0]))[0]


CatalogEntry = tuple[str | None, str | None]  # (category, brand) of a sku


def apply_sale(profile: Profile, sale: Sale, catalog: Mapping[str, CatalogEntry] | None = None) -> Profile:
    """The profile after one sale or return. Order of arrival does not change the sums; a visit
    older than the last one asks for the rhythm to be rebuilt from the member's history. Category
    and brand habits count the items whose sku the catalog knows."""
    if sale.kind == "return":
        items = sum(line.quantity for line in sale.lines)
        return replace(profile, returns=profile.returns + 1, monetary=profile.monetary + sale.total,
                       items_returned=profile.items_returned + items)
    when = sale.occurred_at
    items = sum(line.quantity for line in sale.lines)
    on_discount = sum(line.quantity for line in sale.lines if line.discount > 0)
    discount = sum((line.discount for line in sale.lines), ZERO)
    day = when.date()
    out_of_order = profile.rhythm.last_visit_day is not None and day < profile.rhythm.last_visit_day
    return replace(
        profile,
        first_purchase_at=when if profile.first_purchase_at is None else min(profile.first_purchase_at, when),
        last_purchase_at=when if profile.last_purchase_at is None else max(profile.last_purchase_at, when),
        frequency=profile.frequency + 1,
        monetary=profile.monetary + sale.total,
        gross_sales=profile.gross_sales + sale.total,
        items_bought=profile.items_bought + items,
        lines_bought=profile.lines_bought + len(sale.lines),
        items_on_discount=profile.items_on_discount + on_discount,
        discount_total=profile.discount_total + discount,
        store_visits=_bump(profile.store_visits, sale.store_id),
        hour_of_day=_bump(profile.hour_of_day, str(when.hour)),
        weekday=_bump(profile.weekday, str(when.weekday())),
        rhythm=profile.rhythm if out_of_order else profile.rhythm.after_visit(day),
        rhythm_needs_rebuild=profile.rhythm_needs_rebuild or out_of_order,
        category_items=_add_items(profile.category_items, sale, catalog, 0),
        brand_items=_add_items(profile.brand_items, sale, catalog, 1),
    )


def _add_items(counts: Mapping[str, int], sale: Sale, catalog: Mapping[str, CatalogEntry] | None,
               which: int) -> Mapping[str, int]:
    if not catalog:
        return counts
    updated = dict(counts)
    for line in sale.lines:
        entry = catalog.get(line.sku)
        label = entry[which] if entry else None
        if label:
            updated[label] = updated.get(label, 0) + line.quantity
    return updated


def top_shares(counts: Mapping[str, int], limit: int = 5) -> dict[str, float]:
    total = sum(counts.values())
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:limit]
    return {label: round(items / total, 4) for label, items in ranked} if total else {}


def _bump(counts: Mapping[str, int], key: str) -> dict[str, int]:
    updated = dict(counts)
    updated[key] = updated.get(key, 0) + 1
    return updated


def recency_days(profile: Profile, as_of: datetime | None) -> float | None:
    if profile.last_purchase_at is None or as_of is None:
        return None
    return max(0.0, (as_of - profile.last_purchase_at).total_seconds() / 86400)


def days_overdue(profile: Profile, as_of: datetime | None, sigmas: float = 2.0) -> float | None:
    """How far past their own rhythm (mean + `sigmas`·spread days) a member is; None without a rhythm."""
    recency = recency_days(profile, as_of)
    if recency is None or profile.rhythm.intervals < 2:
        return None
    return recency - (profile.rhythm.mean_days + sigmas * profile.rhythm.spread_days)


def profile_view(profile: Profile, as_of: datetime | None) -> dict[str, Any]:
    """What the API and the `member.profiles.v1` topic say about a member."""
    return {
        "member_id": profile.member_id,
        "as_of": as_of,
        "first_purchase_at": profile.first_purchase_at,
        "last_purchase_at": profile.last_purchase_at,
        "recency_days": recency_days(profile, as_of),
        "frequency": profile.frequency,
        "returns": profile.returns,
        "monetary": profile.monetary,
        "average_basket_value": profile.average_basket_value,
        "average_basket_size": round(profile.average_basket_size, 3),
        "returns_rate": round(profile.returns_rate, 4),
        "discount_share": round(profile.discount_share, 4),
        "preferred_store": profile.preferred_store,
        "store_visits": dict(profile.store_visits),
        "hour_of_day": {int(k): v for k, v in profile.hour_of_day.items()},
        "weekday": {int(k): v for k, v in profile.weekday.items()},
        "visit_rhythm": {"intervals": profile.rhythm.intervals, "mean_days": round(profile.rhythm.mean_days, 3),
                         "spread_days": round(profile.rhythm.spread_days, 3),
                         "days_overdue": _round(days_overdue(profile, as_of))},
        # Shares of items bought, from the product catalog (catalog.products.v1). Online Retail has
        # no catalog, so these stay empty for it rather than being invented.
        "categories": top_shares(profile.category_items),
        "brands": top_shares(profile.brand_items),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# --- RFM: 1–5 by quintile over the active population -----------------------------------------

@dataclass(frozen=True)
class RfmCutpoints:
    """The 20/40/60/80 % points of recency (days), frequency and monetary over active members."""

    recency: tuple[float, ...]
    frequency: tuple[float, ...]
    monetary: tuple[float, ...]


def quintile(value: float, cutpoints: tuple[float, ...]) -> int:
    """1 for the bottom fifth … 5 for the top fifth."""
    return 1 + sum(1 for cut in cutpoints if value > cut)


def rfm_scores(profile: Profile, as_of: datetime | None, cutpoints: RfmCutpoints | None) -> dict[str, int] | None:
    recency = recency_days(profile, as_of)
    if cutpoints is None or recency is None:
        return None
    return {"r": 6 - quintile(recency, cutpoints.recency),  # the most recent fifth scores 5
            "f": quintile(profile.frequency, cutpoints.frequency),
            "m": quintile(float(profile.monetary), cutpoints.monetary)}
