"""The segmenter's decisions (pure: no I/O, no clock; time is the events' own).

A member's segments come in three dimensions, each with hysteresis so a member does not flip
between two segments on every sale:

- `value_tier`: the usual RFM map (champions … lost) from recency/frequency/monetary scores 1–5 by
  quintile over the active population. A score only moves when the value is clearly past a cut
  point (a band of `band` of the value around it), so a member sitting on a boundary stays put.
- `persona`: a rule a marketer can read, first match in priority order (dormant, new member,
  price-sensitive, brand-loyal, bulk stocker, frequent small-basket, weekend family, regular).
  Thresholds are entered at one value and left at a lower one.
- `cluster`: learned online (river); a member moves to another cluster only when it is clearly
  nearer (`cluster_margin`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from crm_shared.events import MemberProfileUpdated

from segmenter.churn import ChurnEstimate, PurchaseSummary

DAY = timedelta(days=1)

# --- features ---------------------------------------------------------------------------------

FEATURE_LABELS: dict[str, tuple[str, str]] = {
    # feature: (what a higher value means, what a lower value means)
    "log_monetary": ("spends more in total", "spends less in total"),
    "log_visits": ("visits more often in total", "has fewer visits"),
    "log_basket_value": ("bigger baskets by value", "smaller baskets by value"),
    "log_basket_size": ("more items per basket", "fewer items per basket"),
    "log_interval_days": ("longer gaps between visits", "shorter gaps between visits"),
    "weekend_share": ("shops more at weekends", "shops less at weekends"),
    "evening_share": ("shops more in the evening", "shops less in the evening"),
    "discount_share": ("buys more on discount", "buys less on discount"),
    "returns_rate": ("returns more", "returns less"),
    "top_category_share": ("concentrates on one category", "spreads over categories"),
    "top_brand_share": ("sticks to one brand", "spreads over brands"),
}
FEATURES = tuple(FEATURE_LABELS)
DEFAULT_INTERVAL_DAYS = 60.0  # a one-visit member's gap is unknown; a neutral value, not a claim


def weekend_share(weekday: Mapping[int, int]) -> float:
    total = sum(weekday.values())
    return (weekday.get(5, 0) + weekday.get(6, 0)) / total if total else 0.0


def evening_share(hour_of_day: Mapping[int, int]) -> float:
    total = sum(hour_of_day.values())
    return sum(n for hour, n in hour_of_day.items() if hour >= 17) / total if total else 0.0


def features(profile: MemberProfileUpdated) -> dict[str, float]:
    """What a member's behaviour looks like, as numbers on comparable scales (logs for amounts)."""
    rhythm = profile.visit_rhythm
    interval = rhythm.mean_days if rhythm.intervals >= 1 else DEFAULT_INTERVAL_DAYS
    return {
        "log_monetary": math.log1p(max(float(profile.monetary), 0.0)),
        "log_visits": math.log1p(rhythm.intervals + 1 if profile.first_purchase_at else 0),
        "log_basket_value": math.log1p(max(float(profile.average_basket_value), 0.0)),
        "log_basket_size": math.log1p(max(profile.average_basket_size, 0.0)),
        "log_interval_days": math.log1p(max(interval, 0.0)),
        "weekend_share": weekend_share(profile.weekday),
        "evening_share": evening_share(profile.hour_of_day),
        "discount_share": profile.discount_share,
        "returns_rate": profile.returns_rate,
        "top_category_share": max(profile.categories.values(), default=0.0),
        "top_brand_share": max(profile.brands.values(), default=0.0),
    }


def purchase_summary(profile: MemberProfileUpdated, as_of: datetime) -> PurchaseSummary | None:
    """The member's buying history in the churn model's terms (visit days on the till's calendar)."""
    if profile.first_purchase_at is None or profile.last_purchase_at is None:
        return None
    rhythm = profile.visit_rhythm
    return PurchaseSummary(
        repeat_visits=rhythm.intervals,
        recency_days=max((profile.last_purchase_at - profile.first_purchase_at) / DAY, 0.0),
        age_days=max((as_of - profile.first_purchase_at) / DAY, 0.0),
        mean_interval_days=rhythm.mean_days if rhythm.intervals >= 1 else None,
        spread_days=rhythm.spread_days if rhythm.intervals >= 2 else None,
    )


# --- the population -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Population:
    """Cut points over the active population, refreshed now and then (not per event)."""

    recency: tuple[float, ...] = ()      # 4 cut points of days since last visit
    frequency: tuple[float, ...] = ()    # 4 cut points of visits
    monetary: tuple[float, ...] = ()     # 4 cut points of net spend
    basket_value_median: float = 0.0
    basket_size_p80: float = 0.0
    basket_size_median: float = 0.0
    members: int = 0


REVIEW_EPOCH = date(2000, 1, 3)  # a Monday: weekly reviews fall on Mondays


def review_due(before: datetime | None, now: datetime, every_days: int) -> datetime | None:
    """The latest review midnight (UTC) in (`before`, `now`], or None: event time alone decides when
    everyone is reviewed, never where a consumer batch happens to end."""
    if before is None:
        return None
    today = now.astimezone(UTC).date()
    day = today - timedelta(days=(today - REVIEW_EPOCH).days % every_days)
    midnight = datetime.combine(day, time(0), UTC)
    return midnight if midnight > before else None


def population_from_state(state: dict[str, Any]) -> Population:
    """A `Population` as `dataclasses.asdict` saved it (JSON turns its tuples into lists)."""
    cuts = {name: tuple(state.get(name, ())) for name in ("recency", "frequency", "monetary")}
    return Population(**cuts, basket_value_median=float(state.get("basket_value_median", 0.0)),
                      basket_size_p80=float(state.get("basket_size_p80", 0.0)),
                      basket_size_median=float(state.get("basket_size_median", 0.0)),
                      members=int(state.get("members", 0)))


def quartiles_to_quintiles(values: Sequence[float]) -> tuple[float, ...]:
    """The four cut points (20/40/60/80th percentiles) of `values`."""
    if len(values) < 5:
        return ()
    ordered = sorted(values)
    return tuple(statistics.quantiles(ordered, n=5, method="inclusive"))


def population_of(rows: Iterable[tuple[float, int, float, float, float]]) -> Population:
    """rows: (recency days, visits, monetary, basket value, basket size) of active members."""
    recency, frequency, monetary, value, size = [], [], [], [], []
    for r, f, m, v, s in rows:
        recency.append(r)
        frequency.append(float(f))
        monetary.append(m)
        value.append(v)
        size.append(s)
    if not recency:
        return Population()
    return Population(
        recency=quartiles_to_quintiles(recency), frequency=frequency_cuts(frequency),
        monetary=quartiles_to_quintiles(monetary), basket_value_median=statistics.median(value),
        basket_size_p80=statistics.quantiles(size, n=5, method="inclusive")[3] if len(size) >= 5 else max(size),
        basket_size_median=statistics.median(size), members=len(recency),
    )


FREQUENCY_BANDS = (1.0, 2.0, 3.0, 5.0)  # 1 | 2 | 3 | 4-5 | 6+ visits


def frequency_cuts(visits: Sequence[float]) -> tuple[float, ...]:
    """Quintile cut points of visits, unless ties make them collide (most members of a month have
    one visit: cuts (1, 1, 1, 2) would leave F2 and F3 empty); then fixed bands."""
    cuts = quartiles_to_quintiles(visits)
    return cuts if len(set(cuts)) == len(cuts) else FREQUENCY_BANDS


# --- value tiers (RFM) --------------------------------------------------------------------------

def quintile_score(value: float, cuts: Sequence[float], *, lower_is_better: bool = False) -> int:
    """1..5 by where `value` falls among the four cut points (ties go up, as pandas.qcut's right edges)."""
    if not cuts:
        return 3
    score = 1 + sum(1 for cut in cuts if value > cut)
    return 6 - score if lower_is_better else score


def sticky_score(value: float, cuts: Sequence[float], current: int | None, *, band: float,
                 lower_is_better: bool = False) -> int:
    """`quintile_score` with a dead band: keep `current` while a value within ±band of it would give it."""
    raw = quintile_score(value, cuts, lower_is_better=lower_is_better)
    if current is None or raw == current:
        return raw
    low = quintile_score(value * (1 - band), cuts, lower_is_better=lower_is_better)
    high = quintile_score(value * (1 + band), cuts, lower_is_better=lower_is_better)
    return current if min(low, high) <= current <= max(low, high) else raw


VALUE_TIERS = ("champions", "loyal", "potential_loyalist", "new", "promising", "need_attention",
               "about_to_sleep", "at_risk", "cant_lose", "hibernating", "lost")


def value_tier(recency: int, frequency: int) -> str:
    """The usual RFM segment map on recency and frequency scores (monetary follows frequency)."""
    r, f = recency, frequency
    if r >= 5 and f >= 4:
        return "champions"
    if r >= 3 and f >= 4:
        return "loyal"
    if r >= 4 and f in (2, 3):
        return "potential_loyalist"
    if r >= 5 and f == 1:
        return "new"
    if r == 4 and f == 1:
        return "promising"
    if r == 3 and f == 3:
        return "need_attention"
    if r == 3 and f <= 2:
        return "about_to_sleep"
    if r <= 2 and f == 5:
        return "cant_lose"
    if r <= 2 and f >= 3:
        return "at_risk"
    if r == 1 and f == 1:
        return "lost"
    return "hibernating"


@dataclass(frozen=True, slots=True)
class Scores:
    recency: int
    frequency: int
    monetary: int


def rfm(recency_days: float, visits: int, monetary: float, population: Population, current: Scores | None,
        *, band: float) -> Scores:
    return Scores(
        sticky_score(recency_days, population.recency, current.recency if current else None, band=band,
                     lower_is_better=True),
        sticky_score(float(visits), population.frequency, current.frequency if current else None, band=band),
        sticky_score(monetary, population.monetary, current.monetary if current else None, band=band),
    )


# --- personas -----------------------------------------------------------------------------------

PERSONAS = ("dormant", "new_member", "price_sensitive", "brand_loyal", "bulk_stocker", "frequent_small_basket",
            "weekend_family", "regular")
PERSONA_RULES = {
    "dormant": "overdue by their own rhythm (churn model); stays so until a visit or P(active) >= 0.6",
    "new_member": "first visit within the last 30 days and at most 2 visits",
    "price_sensitive": "at least 30% of items bought on discount (leaves below 25%)",
    "brand_loyal": "at least 50% of branded items from one brand (leaves below 40%), 3+ visits",
    "bulk_stocker": "basket size in the top 20% and visits at least 14 days apart",
    "frequent_small_basket": "visits every 4 days or less with baskets below the median value (nearby resident)",
    "weekend_family": "at least 60% of visits at weekends (leaves below 50%) with baskets above the median size",
    "regular": "none of the above",
}


@dataclass(frozen=True, slots=True)
class PersonaFacts:
    dormant: bool
    days_since_first: float
    visits: int
    discount_share: float
    top_brand_share: float
    basket_size: float
    basket_value: float
    interval_days: float | None
    weekend_share: float


def persona_matches(facts: PersonaFacts, population: Population, holding: str | None) -> list[str]:
    """Every persona the member fits, in priority order; the one they hold is kept on its exit threshold."""
    def threshold(persona: str, enter: float, leave: float) -> float:
        return leave if holding == persona else enter

    found = []
    if facts.dormant:
        found.append("dormant")
    if 1 <= facts.visits <= 2 and facts.days_since_first <= 30:
        found.append("new_member")
    if facts.discount_share >= threshold("price_sensitive", 0.30, 0.25):
        found.append("price_sensitive")
    if facts.visits >= 3 and facts.top_brand_share >= threshold("brand_loyal", 0.50, 0.40):
        found.append("brand_loyal")
    if (population.members and facts.basket_size >= population.basket_size_p80 * threshold("bulk_stocker", 1.0, 0.9)
            and facts.interval_days is not None and facts.interval_days >= threshold("bulk_stocker", 14.0, 12.0)):
        found.append("bulk_stocker")
    if (population.members and facts.interval_days is not None
            and facts.interval_days <= threshold("frequent_small_basket", 4.0, 5.0)
            and facts.basket_value < population.basket_value_median * threshold("frequent_small_basket", 1.0, 1.1)):
        found.append("frequent_small_basket")
    if (population.members and facts.visits >= 3 and facts.weekend_share >= threshold("weekend_family", 0.60, 0.50)
            and facts.basket_size >= population.basket_size_median * threshold("weekend_family", 1.0, 0.9)):
        found.append("weekend_family")
    found.append("regular")
    return found


# --- clusters -----------------------------------------------------------------------------------

def sticky_cluster(distances: Mapping[int, float], current: int | None, *, margin: float) -> int:
    """The nearest cluster, unless the current one is within `margin` (relative) of it."""
    nearest = min(distances, key=lambda c: (distances[c], c))
    if current is None or current not in distances or current == nearest:
        return nearest
    return current if distances[current] <= distances[nearest] * (1 + margin) + 1e-12 else nearest


def cluster_name(cluster: int) -> str:
    return f"cluster-{cluster}"


# --- one member's classification -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class MemberSegments:
    value_tier: str | None = None
    persona: str | None = None
    cluster: str | None = None
    scores: Scores | None = None

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in (("value_tier", self.value_tier), ("persona", self.persona),
                                  ("cluster", self.cluster)) if v is not None}


@dataclass(frozen=True, slots=True)
class Change:
    dimension: str
    old: str | None
    new: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class Classified:
    segments: MemberSegments
    changes: list[Change] = field(default_factory=list)


def describe_scores(scores: Scores) -> str:
    return f"R{scores.recency} F{scores.frequency} M{scores.monetary}"


def classify(*, current: MemberSegments, recency_days: float, visits: int, monetary: float, facts: PersonaFacts,
             population: Population, cluster: int | None, churn: ChurnEstimate | None, band: float) -> Classified:
    """Decide a member's three segments from their latest figures; say what changed and why."""
    scores = rfm(recency_days, visits, monetary, population, current.scores, band=band) if population.members else None
    tier = value_tier(scores.recency, scores.frequency) if scores else current.value_tier
    personas = persona_matches(facts, population, current.persona)
    persona = personas[0]
    cluster_label = cluster_name(cluster) if cluster is not None else current.cluster
    changes = []
    if tier != current.value_tier and scores is not None:
        changes.append(Change("value_tier", current.value_tier, tier,
                              f"{describe_scores(scores)}: {recency_days:.0f} days since last visit, {visits} visits, "
                              f"{monetary:.2f} net spend"))
    if persona != current.persona:
        reason = PERSONA_RULES[persona]
        if persona == "dormant" and churn is not None:
            reason += f"; P(active) {churn.p_active:.2f}"
        changes.append(Change("persona", current.persona, persona, reason))
    if cluster_label != current.cluster:
        changes.append(Change("cluster", current.cluster, cluster_label, "nearest learned behaviour cluster"))
    return Classified(MemberSegments(tier, persona, cluster_label, scores), changes)


DORMANT_LEAVE_P_ACTIVE = 0.6  # the churn model enters dormancy below 0.5; leaving it takes a visit or 0.6


def is_dormant(churn: ChurnEstimate | None, *, held: str | None, visited_since: bool) -> bool:
    """The churn model's verdict, with hysteresis: a dormant member stays dormant until they visit
    again or their P(active) clearly recovers (a weekly refit must not flip them back and forth,
    each flip waking the notifier)."""
    if churn is None:
        return False
    if churn.dormant:
        return True
    return held == "dormant" and not visited_since and churn.p_active < DORMANT_LEAVE_P_ACTIVE


def persona_facts(profile: MemberProfileUpdated, feats: Mapping[str, float], as_of: datetime,
                  churn: ChurnEstimate | None, *, held: str | None = None, visited_since: bool = True) -> PersonaFacts:
    rhythm = profile.visit_rhythm
    first = profile.first_purchase_at
    return PersonaFacts(
        dormant=is_dormant(churn, held=held, visited_since=visited_since),
        days_since_first=(as_of - first) / DAY if first else 0.0,
        visits=rhythm.intervals + 1 if first else 0,
        discount_share=profile.discount_share,
        top_brand_share=feats["top_brand_share"],
        basket_size=profile.average_basket_size,
        basket_value=float(profile.average_basket_value),
        interval_days=rhythm.mean_days if rhythm.intervals >= 1 else None,
        weekend_share=feats["weekend_share"],
    )


# --- what separates a segment --------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Distinction:
    feature: str
    effect: float  # standardised mean difference: (mean inside - mean outside) / pooled sd
    inside: float
    outside: float

    @property
    def words(self) -> str:
        more, less = FEATURE_LABELS.get(self.feature, (f"higher {self.feature}", f"lower {self.feature}"))
        return f"{more if self.effect > 0 else less} ({self.effect:+.1f} sd)"


def distinctions(inside: Sequence[Mapping[str, float]], outside: Sequence[Mapping[str, float]],
                 limit: int = 3, min_effect: float = 0.2) -> list[Distinction]:
    """The features whose standardised mean difference between the segment and the rest is largest."""
    if not inside or not outside:
        return []
    found = []
    for feature in FEATURES:
        a = [row.get(feature, 0.0) for row in inside]
        b = [row.get(feature, 0.0) for row in outside]
        mean_a, mean_b = statistics.fmean(a), statistics.fmean(b)
        var_a = statistics.pvariance(a, mean_a) if len(a) > 1 else 0.0
        var_b = statistics.pvariance(b, mean_b) if len(b) > 1 else 0.0
        pooled = math.sqrt(((len(a) - 1) * var_a + (len(b) - 1) * var_b) / max(len(a) + len(b) - 2, 1))
        if pooled <= 1e-12:
            continue
        effect = (mean_a - mean_b) / pooled
        if abs(effect) >= min_effect:
            found.append(Distinction(feature, effect, mean_a, mean_b))
    found.sort(key=lambda d: (-abs(d.effect), d.feature))
    return found[:limit]


def segment_trend(sizes: Mapping[date, int], today: date) -> dict[str, Any]:
    """Size now against 7 and 30 event-days before (the nearest recorded day at or before)."""
    def at_or_before(day: date) -> int | None:
        known = [d for d in sizes if d <= day]
        return sizes[max(known)] if known else None

    now = at_or_before(today)
    week, month = at_or_before(today - 7 * DAY), at_or_before(today - 30 * DAY)
    return {"size": now, "change_7d": None if now is None or week is None else now - week,
            "change_30d": None if now is None or month is None else now - month}


# --- product analytics ---------------------------------------------------------------------------

def seasonality_index(daily: Mapping[date, float], *, by: str) -> dict[int, float]:
    """Average units per selling day in each month (1–12) or weekday (0=Mon…6) over the overall
    average per day: 1.0 is an ordinary period, 1.5 sells half as much again. Days without sales
    inside the product's span count as zero."""
    if not daily:
        return {}
    first, last = min(daily), max(daily)
    span = (last - first).days + 1
    overall = sum(daily.values()) / span
    totals: dict[int, float] = {}
    days: dict[int, int] = {}
    for offset in range(span):
        day = first + offset * DAY
        key = day.month if by == "month" else day.weekday()
        totals[key] = totals.get(key, 0.0) + daily.get(day, 0.0)
        days[key] = days.get(key, 0) + 1
    if overall <= 0:
        return {key: 0.0 for key in sorted(totals)}
    return {key: round(totals[key] / days[key] / overall, 4) for key in sorted(totals)}


def trend(recent: float, previous: float, *, threshold: float = 0.15) -> str:
    """growing / declining / steady by the change between two equal periods (±15%), or new / gone."""
    if previous <= 0:
        return "new" if recent > 0 else "none"
    if recent <= 0:
        return "gone"
    change = (recent - previous) / previous
    return "growing" if change > threshold else "declining" if change < -threshold else "steady"
