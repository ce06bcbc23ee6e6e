"""The read side: what marketers, store staff and the notifier ask the segmenter."""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from segmenter import domain, store
from segmenter.handlers import SegmentHandlers

DIMENSION_OF = {**dict.fromkeys(domain.VALUE_TIERS, "value_tier"), **dict.fromkeys(domain.PERSONAS, "persona")}
VALUE_TIER_RULES = {
    "champions": "bought recently (R5) and often (F4-5)",
    "loyal": "buy often (F4-5), not lapsed (R3-4)",
    "potential_loyalist": "recent (R4-5) with a few visits (F2-3)",
    "new": "first visit very recently (R5 F1)",
    "promising": "recent (R4), one visit (F1)",
    "need_attention": "middling recency and frequency (R3 F3)",
    "about_to_sleep": "slipping (R3), few visits (F1-2)",
    "at_risk": "used to buy often (F3-4), not lately (R1-2)",
    "cant_lose": "the most frequent buyers (F5), gone quiet (R1-2)",
    "hibernating": "lapsed (R1-2), few visits",
    "lost": "longest lapsed (R1), one visit (F1)",
}


def dimension_of(segment: str, n_clusters: int) -> str | None:
    match = re.fullmatch(r"cluster-([0-9]{1,3})", segment)
    if match:
        return "cluster" if int(match.group(1)) < n_clusters else None
    return DIMENSION_OF.get(segment)


def rule_of(dimension: str, segment: str) -> str:
    if dimension == "value_tier":
        return VALUE_TIER_RULES[segment]
    if dimension == "persona":
        return domain.PERSONA_RULES[segment]
    return "learned online from behaviour; see describing features"


class PeriodOutOfRange(ValueError):
    """`from` after `to` (or after the latest sale day when `to` is not given)."""


class SegmentQueries:
    def __init__(self, engine: AsyncEngine, handlers: SegmentHandlers) -> None:
        self.engine = engine
        self.handlers = handlers

    async def segments(self) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            counts = await store.segment_counts(conn)
            clock = await store.load_clock(conn)
        return {"as_of": clock, "dimensions": {
            dimension: [{"id": name, "size": size, "rule": rule_of(dimension, name)}
                        for name, size in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))]
            for dimension, sizes in counts.items()}}

    async def sizes_over_time(self, dimension: str, days: int) -> dict[str, Any]:
        """Segment sizes per event day (recorded when event time enters a new day), the last `days` days."""
        async with self.engine.connect() as conn:
            clock = await store.load_clock(conn)
            since = clock.date() - timedelta(days=days - 1) if clock else None
            by_day = await store.sizes_by_day(conn, dimension, since)
        return {"dimension": dimension, "as_of": clock,
                "days": [{"day": day, "sizes": sizes} for day, sizes in sorted(by_day.items())]}

    async def segment(self, segment: str, dimension: str, examples: int = 5) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            counts = await store.segment_counts(conn)
            clock = await store.load_clock(conn)
            sizes = await store.sizes_over_time(conn, dimension, segment)
            inside, outside = await store.features_sample(conn, dimension, segment)
            sample = await store.segment_members(conn, dimension, segment, limit=examples)
        described = domain.distinctions(inside, outside)
        size = counts.get(dimension, {}).get(segment, 0)
        trend = domain.segment_trend(sizes, clock.date()) if clock else {"size": None, "change_7d": None, "change_30d": None}
        return {
            "id": segment, "dimension": dimension, "as_of": clock, "size": size, "rule": rule_of(dimension, segment),
            "trend": {"change_7d": trend["change_7d"], "change_30d": trend["change_30d"],
                      "history": [{"day": d, "size": n} for d, n in sorted(sizes.items())][-90:]},
            "description": "; ".join(d.words for d in described) or "not distinct from the rest on any feature",
            "describing_features": [{"feature": d.feature, "effect_size": round(d.effect, 3),
                                     "segment_mean": round(d.inside, 4), "others_mean": round(d.outside, 4)}
                                    for d in described],
            "example_members": [row["member_id"] for row in sample],
        }

    async def segment_members(self, segment: str, dimension: str, after: str | None, limit: int) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            ids = await store.members_in(conn, dimension, segment, after=after, limit=limit)
        return {"id": segment, "members": ids, "next_after": ids[-1] if len(ids) == limit else None}

    async def member(self, member_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            found = await store.load_members(conn, [member_id])
            row = found.get(member_id)
            if row is None:
                return None
            changes = await store.history(conn, member_id)
        scores = row["scores"]
        return {
            "member_id": member_id, "as_of": row["as_of"],
            "segments": {"value_tier": row["value_tier"], "persona": row["persona"], "cluster": row["cluster"]},
            "rfm": {"recency": scores[0], "frequency": scores[1], "monetary": scores[2]} if scores else None,
            "p_active": row["p_active"], "expected_next_visit_at": row["expected_next_visit_at"],
            "dormant": row["persona"] == "dormant",
            "history": [{"dimension": c["dimension"], "old": c["old"], "new": c["new"], "reason": c["reason"],
                         "as_of": c["as_of"]} for c in changes],
        }

    # --- products -----------------------------------------------------------------------------

    async def _period(self, start: date | None, end: date | None, days: int) -> tuple[date | None, date | None]:
        if end is None:
            async with self.engine.connect() as conn:
                end = await store.sales_clock(conn)
        if end is None:
            return None, None
        return (start or end - timedelta(days=days - 1)), end

    async def top_products(self, *, store_id: str | None, start: date | None, end: date | None, days: int, by: str,
                           worst: bool, limit: int) -> dict[str, Any]:
        start, end = await self._period(start, end, days)
        if start is None or end is None:
            return {"store": store_id, "from": None, "to": None, "by": by, "products": []}
        if start > end:
            raise PeriodOutOfRange(f"{start} is after the period's end {end} (the latest sale day when `to` is absent)")
        length = (end - start).days + 1
        async with self.engine.connect() as conn:
            ranked = await store.product_ranking(conn, store=store_id, start=start, end=end, by=by, worst=worst,
                                                 limit=limit)
            skus = [r["sku"] for r in ranked]
            before = await store.period_totals(conn, skus, store=store_id, start=start - timedelta(days=length),
                                               end=start - timedelta(days=1))
            names = await store.descriptions(conn, skus)
        return {"store": store_id, "from": start, "to": end, "by": by, "order": "worst" if worst else "best",
                "products": [{"sku": r["sku"], "description": names.get(r["sku"], ""), "quantity": int(r["quantity"]),
                              "revenue": str(r["revenue"]), "baskets": int(r["baskets"]),
                              "selling_days": int(r["selling_days"]),
                              "trend": domain.trend(float(r["quantity"]), before.get(r["sku"], 0.0))} for r in ranked]}

    async def seasonality(self, sku: str, store_id: str | None) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            daily = await store.product_days(conn, sku, store_id)
            names = await store.descriptions(conn, [sku])
            now = await store.sales_clock(conn)
        if not daily:
            return None
        last = max(max(daily), now) if now else max(daily)  # event-time now: a product that stopped selling is "gone"
        recent = sum(q for d, q in daily.items() if d > last - timedelta(days=28))
        previous = sum(q for d, q in daily.items() if last - timedelta(days=56) < d <= last - timedelta(days=28))
        return {"sku": sku, "description": names.get(sku, ""), "store": store_id,
                "first_sold": min(daily), "last_sold": max(daily), "as_of": last, "units": sum(daily.values()),
                "by_month": domain.seasonality_index(daily, by="month"),
                "by_weekday": domain.seasonality_index(daily, by="weekday"),
                "trend": {"last_28_days": recent, "previous_28_days": previous,
                          "direction": domain.trend(recent, previous)},
                "note": "index = average units per day in that month/weekday over the average per day "
                        "across the product's selling span (1.0 = ordinary)"}

    async def slow_movers(self, *, store_id: str | None, days: int, limit: int) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            end = await store.sales_clock(conn)
            if end is None:
                return {"store": store_id, "since": None, "products": []}
            since = end - timedelta(days=days - 1)
            rows = await store.slow_movers(conn, store=store_id, since=since, limit=limit)
            names = await store.descriptions(conn, [r["sku"] for r in rows])
        return {"store": store_id, "since": since, "as_of": end, "products": [
            {"sku": r["sku"], "description": names.get(r["sku"], ""), "last_sold": r["last_sold"],
             "units_since": int(r["units_since"]), "units_ever": int(r["units_ever"]),
             "idle_days": (end - r["last_sold"]).days} for r in rows]}
