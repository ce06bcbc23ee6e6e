"""Replenishment policy simulation over Online Retail's year: our recomputed reorder points beside a
static min/max set once from the first 3 months (the Odoo way), same lead time, same SKUs.

    .venv/bin/python bench/replenishment_policy.py [--skus 200] [--lead-time 3]

Demand: the netted daily demand of the top SKUs (bench/forecast_accuracy.py says how cancellations
are netted). The first 3 months (2010-12-01 .. 2011-02-28) set the static policy and warm up our
forecaster; the simulation runs from 2011-03-01 to the end of the file, each SKU on its own:

- every morning, orders placed `lead time` days earlier arrive; the day's demand is served from
  stock on hand, what cannot be served is lost (fill rate = units served / units demanded);
- every evening each policy looks at the stock position (on hand + on order): at or below its
  reorder point it orders up to its order-up-to level;
- static min/max: min = mean daily demand of the first 3 months x L + z x its std dev x sqrt(L),
  max = min + mean x cover days (z 1.65, 7 days: a typical typed rule); never changed again;
- ours: the service's own code and default policy (replenishment.domain: learn_day, reorder_levels,
  order_quantity, Policy()) learns every day's demand and recomputes the reorder point and the
  order-up-to level every evening.
A second table runs both with the SAME z and cover days, over a small grid, so that the reader
sees where the gain comes from (recomputing) and what it costs (stock) at each setting.
Both start with the static max on hand. Average stock = mean units on hand at the end of the day,
summed over the SKUs. Target (issue 6): a clearly higher fill rate with no more average stock.
Results: bench/results/replenishment_policy.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "services" / "replenishment"))

from forecast_accuracy import DATASET, netted_daily_demand, series  # noqa: E402
from replenishment.domain import DemandModel, Policy, Terms, learn_day, order_quantity, reorder_levels  # noqa: E402

RESULTS = HERE / "results" / "replenishment_policy.json"
WARM_UP_END = date(2011, 3, 1)


def run(demand: np.ndarray, first: date, start: int, lead: int, *, static: tuple[int, int] | None,
        policy: Policy) -> tuple[float, float, np.ndarray]:
    """One SKU. `static` = (min, max) for the static policy; None for ours."""
    terms = Terms("sim", pack_size=1, min_order_quantity=1, lead_time_days=lead)
    model = DemandModel()
    for i in range(start):
        model = learn_day(model, first + timedelta(days=i), float(demand[i]))
    on_hand = static_levels(demand[:start], lead, policy)[1]
    arrivals: dict[int, int] = {}
    served = demanded = 0.0
    stock = np.zeros(len(demand) - start)
    for i in range(start, len(demand)):
        on_hand += arrivals.pop(i, 0)
        sold = min(on_hand, demand[i])
        served += sold
        demanded += demand[i]
        on_hand -= sold
        stock[i - start] = on_hand
        on_order = sum(arrivals.values())
        if static is not None:
            low, high = static
            quantity = high - (on_hand + on_order) if on_hand + on_order <= low else 0
        else:
            model = learn_day(model, first + timedelta(days=i), float(demand[i]))
            levels = reorder_levels(model, first + timedelta(days=i + 1), terms, policy)
            quantity = order_quantity(int(on_hand), on_order, levels, terms)
        if quantity > 0:
            arrivals[i + lead] = arrivals.get(i + lead, 0) + int(quantity)
    return served, demanded, stock


def static_levels(history: np.ndarray, lead: int, policy: Policy) -> tuple[int, int]:
    mean, spread = float(history.mean()), float(history.std())
    low = math.ceil(mean * lead + policy.service_level_z * spread * math.sqrt(lead))
    return low, low + math.ceil(mean * policy.review_days)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skus", type=int, default=200)
    parser.add_argument("--lead-time", type=int, default=3)
    parser.add_argument("--static-z", type=float, default=1.65)
    parser.add_argument("--static-cover-days", type=int, default=7)
    parser.add_argument("--dataset", type=Path, default=DATASET)
    args = parser.parse_args(argv)
    if not args.dataset.exists():
        print(f"{args.dataset} is absent: this bench needs the team's ../shared/datasets", file=sys.stderr)
        return 2
    started = time.perf_counter()
    daily, _ = netted_daily_demand(args.dataset)
    first = min(d for days in daily.values() for d in days)
    last = max(d for days in daily.values() for d in days)
    top = sorted(daily, key=lambda sku: -sum(daily[sku].values()))[:args.skus]
    start = (WARM_UP_END - first).days
    def both(static_policy: Policy, our_policy: Policy) -> dict[str, dict[str, float]]:
        figures: dict[str, dict[str, float]] = {}
        for name in ("static", "ours"):
            served = demanded = 0.0
            stock_total = np.zeros((last - first).days + 1 - start)
            for sku in top:
                demand = series(daily[sku], first, last)
                static = static_levels(demand[:start], args.lead_time, static_policy) if name == "static" else None
                s, d, stock = run(demand, first, start, args.lead_time, static=static,
                                  policy=static_policy if name == "static" else our_policy)
                served, demanded, stock_total = served + s, demanded + d, stock_total + stock
            figures[name] = {"fill_rate": served / demanded, "average_stock_units": float(stock_total.mean()),
                             "units_demanded": demanded}
        return figures

    service = Policy()
    headline = both(Policy(service_level_z=args.static_z, review_days=args.static_cover_days), service)
    figures = {f"static min/max from the first 3 months (z {args.static_z}, max = min + {args.static_cover_days} days)":
               headline["static"],
               f"ours, the service's policy (z {service.service_level_z}, up to +{service.review_days} day)":
               headline["ours"]}
    matched = {f"z {z} / {days} days": both(Policy(service_level_z=z, review_days=days),
                                            Policy(service_level_z=z, review_days=days))
               for z in (0.5, 1.0, 1.65) for days in (1, 7)}
    static_row, ours = headline["static"], headline["ours"]
    print(f"{len(top)} SKUs, simulated {WARM_UP_END} .. {last}, lead time {args.lead_time} days for both; lost sales")
    print(f"  {'':<72} {'fill rate':>9} {'avg stock (units)':>18}")
    for name, row in figures.items():
        print(f"  {name:<72} {row['fill_rate']:>9.1%} {row['average_stock_units']:>18,.0f}")
    verdicts = {"higher fill rate than static": bool(ours["fill_rate"] > static_row["fill_rate"]),
                "no more average stock than static": bool(ours["average_stock_units"] <= static_row["average_stock_units"])}
    for label, ok in verdicts.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {label}")
    print("\nboth with the same parameters (fill rate / average stock):")
    for setting, pair in matched.items():
        print(f"  {setting:<16} static {pair['static']['fill_rate']:6.1%} / {pair['static']['average_stock_units']:>8,.0f}"
              f"   ours {pair['ours']['fill_rate']:6.1%} / {pair['ours']['average_stock_units']:>8,.0f}")
    print(f"whole run {time.perf_counter() - started:.0f} s")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "measured_at": datetime.now().astimezone().isoformat(timespec="seconds"), "skus": len(top),
        "simulated_from": WARM_UP_END.isoformat(), "simulated_to": last.isoformat(), "lead_time_days": args.lead_time,
        "policies": figures, "same_parameters": matched, "targets": verdicts}, indent=2) + "\n")
    print(f"results: {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
