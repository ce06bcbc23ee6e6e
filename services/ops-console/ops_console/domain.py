"""What the console shows, decided from what the services answered: pure functions, no I/O, no clock.

Every panel is built from one service's answer (or from its absence: a service that is down or
refuses shows as `unavailable` with the reason, and the other panels still fill in).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

OPEN_ORDER_STATUSES = frozenset({"raised", "acknowledged", "shipped", "partially_received"})


@dataclass(frozen=True)
class Unavailable:
    """A service that did not give the console its figures, and why (shown in the panel)."""

    service: str
    reason: str


Answer = Mapping[str, Any] | Unavailable


def unavailable_panel(missing: Unavailable) -> dict[str, Any]:
    return {"available": False, "service": missing.service, "reason": missing.reason}


def hour_buckets(as_of: datetime, hours: int) -> list[datetime]:
    """The `hours` whole hours of event time ending with the one `as_of` falls in, oldest first
    (the gateway's live-stats window)."""
    top = as_of.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return [top - timedelta(hours=offset) for offset in range(hours - 1, -1, -1)]


def sales_panel(live: Answer) -> dict[str, Any]:
    """Live sales per store and per hour of event time, from the gateway's `/v1/stats/live`."""
    if isinstance(live, Unavailable):
        return unavailable_panel(live)
    stores = sorted(live["stores"], key=lambda s: (-Decimal(s["revenue"]), s["store_id"]))
    as_of = _parse_time(live["as_of"])
    per_hour: dict[datetime, dict[str, Any]] = {}
    if as_of is not None:
        per_hour = {h: {"hour": h, "sales": 0, "returns": 0, "revenue": Decimal("0")}
                    for h in hour_buckets(as_of, int(live["window_hours"]))}
    for store in stores:
        for hour in store["hours"]:
            bucket = per_hour.get(_parse_time(hour["hour"]))  # type: ignore[arg-type]
            if bucket is not None:
                bucket["sales"] += int(hour["sales"])
                bucket["returns"] += int(hour["returns"])
                bucket["revenue"] += Decimal(hour["revenue"])
    return {
        "available": True, "as_of": live["as_of"], "window_hours": live["window_hours"],
        "totals": {"sales": sum(int(s["sales"]) for s in stores), "returns": sum(int(s["returns"]) for s in stores),
                   "revenue": str(sum((Decimal(s["revenue"]) for s in stores), Decimal("0")))},
        "stores": [{"store_id": s["store_id"], "sales": int(s["sales"]), "returns": int(s["returns"]),
                    "revenue": str(s["revenue"])} for s in stores],
        "hours": [{"hour": b["hour"].isoformat(), "sales": b["sales"], "returns": b["returns"],
                   "revenue": str(b["revenue"])} for b in sorted(per_hour.values(), key=lambda b: b["hour"])],
        "top_skus": list(live["top_skus"]),
    }


def segments_panel(current: Answer, over_time: Answer, dimension: str) -> dict[str, Any]:
    """Segment sizes now (every dimension) and one dimension's sizes per recorded event day."""
    if isinstance(current, Unavailable):
        return unavailable_panel(current)
    names = [s["id"] for s in current["dimensions"].get(dimension, [])]
    series: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    days: list[str] = []
    if not isinstance(over_time, Unavailable):
        for row in over_time["days"]:
            for name in row["sizes"]:
                series.setdefault(name, [])
        for row in over_time["days"]:
            days.append(str(row["day"]))
            for name, points in series.items():
                points.append({"day": str(row["day"]), "size": int(row["sizes"].get(name, 0))})
    return {
        "available": True, "as_of": current["as_of"], "dimension": dimension,
        "current": {d: [{"id": s["id"], "size": int(s["size"])} for s in rows] for d, rows in current["dimensions"].items()},
        "members": sum(int(s["size"]) for s in current["dimensions"].get("value_tier", [])),
        "days": days,
        "over_time": [{"segment": name, "points": points} for name, points in series.items()],
        "trend_note": None if not isinstance(over_time, Unavailable) else f"trend unavailable: {over_time.reason}",
    }


def rules_panel(rules: Answer, store: str | None) -> dict[str, Any]:
    if isinstance(rules, Unavailable):
        return unavailable_panel(rules)
    return {"available": True, "scope": store or "chain", "baskets": rules.get("baskets"),
            "rules": [{"antecedents": list(r["antecedents"]), "consequent": r["consequent"],
                       "support": r["support"], "confidence": r["confidence"], "lift": r["lift"]}
                      for r in rules["rules"]]}


def stock_panel(per_store: Answer, items: Answer | None, store: str | None) -> dict[str, Any]:
    """SKUs at or below their reorder point: how many per store, and the items of one store (the
    filtered store, else the store with the most)."""
    if isinstance(per_store, Unavailable):
        return unavailable_panel(per_store)
    stores = [{"store_id": s["store_id"], "skus": int(s["skus"])} for s in per_store["stores"]
              if store is None or s["store_id"] == store]
    shown: list[dict[str, Any]] = []
    items_note = None
    if isinstance(items, Unavailable):
        items_note = items.reason
    elif items is not None:
        shown = [{"store_id": i["store_id"], "sku": i["sku"], "on_hand": i["on_hand"], "on_order": i["on_order"],
                  "reorder_point": i["reorder_point"], "days_of_cover": i["days_of_cover"],
                  "supplier_id": i["supplier_id"]} for i in items["items"]]
    return {"available": True, "stores": stores, "skus_below": sum(s["skus"] for s in stores),
            "items_store": items_store(per_store, store), "items": shown, "items_note": items_note}


def items_store(per_store: Answer, store: str | None) -> str | None:
    """Whose items the stock panel lists: the filtered store, else the one with most SKUs below."""
    if store is not None or isinstance(per_store, Unavailable):
        return store
    ranked = sorted(per_store["stores"], key=lambda s: (-int(s["skus"]), s["store_id"]))
    return ranked[0]["store_id"] if ranked else None


def orders_panel(orders: Answer, shown: int) -> dict[str, Any]:
    if isinstance(orders, Unavailable):
        return unavailable_panel(orders)
    open_orders = [o for o in orders["orders"] if o.get("status") in OPEN_ORDER_STATUSES]
    return {"available": True, "as_of": orders.get("as_of"), "open": len(open_orders),
            "overdue": sum(1 for o in open_orders if o.get("overdue")),
            "orders": [{"po_id": o["po_id"], "supplier_id": o.get("supplier_id"), "store_id": o.get("store_id"),
                        "status": o.get("status"), "lines": len(o.get("lines", [])), "raised_at": o.get("raised_at"),
                        "expected_by": o.get("expected_by"), "overdue": bool(o.get("overdue"))}
                       for o in open_orders[:shown]]}


def campaigns_panel(campaigns: Answer, reports: Mapping[str, Answer]) -> dict[str, Any]:
    """Each campaign's report (sent, still held for the end of quiet hours, withheld, suppressed by reason,
    uplift with its interval) and the totals."""
    if isinstance(campaigns, Unavailable):
        return unavailable_panel(campaigns)
    rows = []
    for campaign in campaigns["campaigns"]:
        campaign_id = campaign["campaign_id"]
        definition = campaign.get("definition") or {}
        report = reports.get(campaign_id)
        row: dict[str, Any] = {"campaign_id": campaign_id, "name": definition.get("name", campaign_id),
                               "trigger": definition.get("trigger"), "status": campaign.get("status")}
        if report is None or isinstance(report, Unavailable):
            row["report"] = None
            row["reason"] = report.reason if isinstance(report, Unavailable) else "no report asked"
        else:
            row["report"] = {key: report.get(key) for key in (
                "sent", "waiting_for_quiet_hours_end", "withheld", "suppressed", "suppressed_total", "redeemed",
                "conversion", "uplift", "uplift_ci95", "incremental_revenue")}
        rows.append(row)
    return {"available": True, "campaigns": rows, "totals": offer_totals(
        [r for r in reports.values() if not isinstance(r, Unavailable)])}


def offer_totals(reports: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Offers sent (and of those, still held until quiet hours end), withheld (control group) and
    suppressions by reason, over campaigns."""
    sent = waiting = withheld = 0
    suppressed: dict[str, int] = {}
    for report in reports:
        sent += int(report.get("sent") or 0)
        waiting += int(report.get("waiting_for_quiet_hours_end") or 0)
        withheld += int(report.get("withheld") or 0)
        for reason, count in (report.get("suppressed") or {}).items():
            suppressed[reason] = suppressed.get(reason, 0) + int(count)
    return {"sent": sent, "waiting_for_quiet_hours_end": waiting, "withheld": withheld,
            "suppressed": dict(sorted(suppressed.items(), key=lambda kv: (-kv[1], kv[0]))),
            "suppressed_total": sum(suppressed.values())}


@dataclass(frozen=True)
class ConsumerGroup:
    service: str
    group: str  # without the topic prefix
    topics: tuple[str, ...]


def lag_panel(groups: Sequence[ConsumerGroup], measured: Mapping[str, Mapping[str, int]] | None,
              measured_at: str | None, prefix: str, failures: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Consumer lag (records not yet committed) per service, and per group and topic beneath."""
    if measured is None:
        return {"available": False, "service": "broker", "reason": "first measurement not taken yet"}
    services: dict[str, dict[str, Any]] = {}
    for group in groups:
        entry = services.setdefault(group.service, {"service": group.service, "lag": 0, "groups": []})
        per_topic = measured.get(prefix + group.group)
        failure = (failures or {}).get(prefix + group.group)
        if per_topic is None:
            entry["groups"].append({"group": group.group, "lag": None, "topics": {},
                                    "reason": failure or "not measured"})
            continue
        topics = {topic.removeprefix(prefix): int(lag) for topic, lag in per_topic.items()}
        total = sum(topics.values())
        entry["lag"] += total
        entry["groups"].append({"group": group.group, "lag": total, "topics": topics, "reason": None})
    return {"available": True, "measured_at": measured_at, "services": list(services.values()),
            "total": sum(s["lag"] for s in services.values())}


def store_choices(*answers: Answer | None) -> list[str]:
    """Every store any service has figures for: the filter's choices."""
    stores: set[str] = set()
    for answer in answers:
        if answer is None or isinstance(answer, Unavailable):
            continue
        for key in ("stores", "orders"):
            for row in answer.get(key, []):
                if isinstance(row, Mapping) and row.get("store_id"):
                    stores.add(str(row["store_id"]))
    return sorted(stores)


def _parse_time(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return datetime.fromisoformat(str(value)).astimezone(UTC)
