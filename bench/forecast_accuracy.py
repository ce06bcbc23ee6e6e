"""Daily SKU demand forecast accuracy: replenishment's online forecaster beside seasonal naive and
statsforecast AutoETS (season 7) refitted weekly, on the top 200 SKUs of Online Retail.

    .venv/bin/python bench/forecast_accuracy.py [--skus 200] [--split 2011-07-04] [--dataset PATH]

Demand. Rows of `online_retail.csv.gz` whose StockCode starts with five digits (products; POST,
DOT, M, BANK CHARGES, AMAZONFEE, gift vouchers... are not demand), unit price >= 0. A `C` invoice
is a cancellation: each of its lines is netted against the SAME customer's most recent earlier
sale lines of the same StockCode (latest first, never below zero), so the demand disappears from
the day it was ordered on, not the day it was cancelled; a cancellation with no such earlier line
(bought before the file starts, or no customer id) is dropped. Negative quantities outside `C`
invoices (stock write-offs) are not demand. Daily demand = netted units per SKU per calendar day
(Europe/London), with zeros on days without a sale (the shop sells nothing on Saturdays).
The top SKUs are the ones with the most netted units over the whole file.

Protocol. Test period = the weeks from `--split` (a Monday) to the end of the file; everything
before is history. At each week start (Monday), with the history up to Sunday:
- AutoETS(season_length=7) is refitted on the whole history and forecasts the 7 days of the week;
- seasonal naive forecasts each day with the same weekday of the week before;
- our forecaster (replenishment.domain.learn_day, the code the service runs) forecasts the 7 days
  from its state on Sunday ("weekly issue", the same information as the two anchors); and, as the
  service really runs, one day ahead after learning every day ("online, 1 day ahead").
WAPE = sum |actual - forecast| / sum actual, over every SKU × day (daily) and SKU × week (weekly).
Targets (issue 6): better than seasonal naive; within 10 % of AutoETS.
The smoothing weights (alpha, gamma) are chosen on history only: the last 8 weeks before the split.
Results: bench/results/forecast_accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import warnings
from collections import defaultdict
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "services" / "replenishment"))

from replenishment.domain import ALPHA, GAMMA, DemandModel, learn_day  # noqa: E402

DATASET = REPO.parent / "shared" / "datasets" / "online_retail.csv.gz"
RESULTS = HERE / "results" / "forecast_accuracy.json"
PRODUCT_CODE = re.compile(r"^\d{5}")


def netted_daily_demand(path: Path) -> tuple[dict[str, dict[date, float]], dict[str, int]]:
    """Netted units per sku per day, and what the netting did (see the module docstring)."""
    import pandas as pd

    frame = pd.read_csv(path, dtype={"InvoiceNo": str, "StockCode": str, "CustomerID": "string"})
    frame["StockCode"] = frame["StockCode"].str.strip()
    frame = frame[frame["StockCode"].str.match(PRODUCT_CODE) & (frame["UnitPrice"] >= 0)]
    frame["when"] = pd.to_datetime(frame["InvoiceDate"])
    cancelled = frame["InvoiceNo"].str.startswith("C")
    sales = frame[~cancelled & (frame["Quantity"] > 0)].sort_values("when")
    cancels = frame[cancelled & (frame["Quantity"] < 0)].sort_values("when")
    stats = {"sale_rows": len(sales), "cancellation_rows": len(cancels), "write_off_rows":
             int((~cancelled & (frame["Quantity"] <= 0)).sum()), "units_sold": int(sales["Quantity"].sum()),
             "units_cancelled": int(-cancels["Quantity"].sum()), "units_netted": 0, "units_unmatched": 0}
    remaining = sales["Quantity"].astype(float).to_numpy().copy()
    by_customer_sku: dict[tuple[str, str], list[int]] = defaultdict(list)
    whens = sales["when"].to_numpy()
    for position, (customer, sku) in enumerate(zip(sales["CustomerID"].fillna(""), sales["StockCode"], strict=True)):
        if customer:
            by_customer_sku[(customer, sku)].append(position)
    for customer, sku, quantity, when in zip(cancels["CustomerID"].fillna(""), cancels["StockCode"],
                                             cancels["Quantity"], cancels["when"].to_numpy(), strict=True):
        to_net = float(-quantity)
        for position in reversed(by_customer_sku.get((customer, sku), []) if customer else []):
            if to_net <= 0:
                break
            if whens[position] > when or remaining[position] <= 0:
                continue
            taken = min(remaining[position], to_net)
            remaining[position] -= taken
            to_net -= taken
            stats["units_netted"] += int(taken)
        stats["units_unmatched"] += int(to_net)
    sales = sales.assign(net=remaining, day=sales["when"].dt.date)
    daily: dict[str, dict[date, float]] = defaultdict(dict)
    for (sku, day), units in sales.groupby(["StockCode", "day"])["net"].sum().items():
        daily[sku][day] = float(units)
    return daily, stats


def series(daily: dict[date, float], first: date, last: date) -> np.ndarray:
    days = (last - first).days + 1
    return np.array([daily.get(first + timedelta(days=i), 0.0) for i in range(days)])


def online_forecasts(y: np.ndarray, first: date, week_starts: list[int], *, alpha: float,
                     gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """(one day ahead, issued at week start) forecasts for every day index >= week_starts[0]."""
    ahead = np.zeros(len(y))
    weekly = np.zeros(len(y))
    model = DemandModel()
    starts = set(week_starts)
    for i, units in enumerate(y):
        day = first + timedelta(days=i)
        if i in starts:
            for h in range(7):
                if i + h < len(y):
                    weekly[i + h] = model.forecast(first + timedelta(days=i + h))
        ahead[i] = model.forecast(day)
        model = learn_day(model, day, float(units), alpha=alpha, gamma=gamma)
    return ahead, weekly


def seasonal_naive(y: np.ndarray, week_starts: list[int]) -> np.ndarray:
    out = np.zeros(len(y))
    for start in week_starts:
        for h in range(7):
            if start + h < len(y):
                out[start + h] = y[start + h - 7]
    return out


def auto_ets(y: np.ndarray, week_starts: list[int]) -> np.ndarray:
    from statsforecast.models import AutoETS

    out = np.zeros(len(y))
    for start in week_starts:
        h = min(7, len(y) - start)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mean = AutoETS(season_length=7).fit(y[:start].astype(float)).predict(h=h)["mean"]
        out[start:start + h] = np.maximum(mean, 0.0)
    return out


def wape(actual: np.ndarray, forecast: np.ndarray) -> float:
    return float(np.abs(actual - forecast).sum() / actual.sum())


def weekly_wape(actual: np.ndarray, forecast: np.ndarray, offset: int) -> float:
    """Both summed per SKU × week (rows = skus, columns = days from the first week start)."""
    a, f = actual[:, offset:], forecast[:, offset:]
    weeks = a.shape[1] // 7
    a = a[:, :weeks * 7].reshape(a.shape[0], weeks, 7).sum(axis=2)
    f = f[:, :weeks * 7].reshape(f.shape[0], weeks, 7).sum(axis=2)
    return float(np.abs(a - f).sum() / a.sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skus", type=int, default=200)
    parser.add_argument("--split", type=date.fromisoformat, default=date(2011, 7, 4))
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--tune-only", action="store_true", help="only the weight grid on history")
    args = parser.parse_args(argv)
    if not args.dataset.exists():
        print(f"{args.dataset} is absent: this bench needs the team's ../shared/datasets", file=sys.stderr)
        return 2
    if args.split.weekday() != 0:
        parser.error("--split must be a Monday")
    started = time.perf_counter()
    daily, stats = netted_daily_demand(args.dataset)
    first = min(d for days in daily.values() for d in days)
    last = max(d for days in daily.values() for d in days)
    top = sorted(daily, key=lambda sku: -sum(daily[sku].values()))[:args.skus]
    matrix = np.array([series(daily[sku], first, last) for sku in top])
    split = (args.split - first).days
    week_starts = list(range(split, matrix.shape[1], 7))
    print(f"{len(top)} SKUs x {matrix.shape[1]} days ({first} .. {last}); test from {args.split}: "
          f"{len(week_starts)} weekly refits; netting: {stats['units_netted']:,} of {stats['units_cancelled']:,} "
          f"cancelled units netted against their orders, {stats['units_unmatched']:,} unmatched (dropped)", flush=True)

    # Smoothing weights chosen on history only: weekly-issued forecasts over the 8 weeks before the split.
    tune_starts = list(range(split - 56, split, 7))
    grid: dict[str, float] = {}
    for alpha in (0.02, 0.05, 0.1, 0.2, 0.3):
        for gamma in (0.02, 0.05, 0.1, 0.2, 0.3):
            forecasts = np.array([online_forecasts(y[:split], first, tune_starts, alpha=alpha, gamma=gamma)[1]
                                  for y in matrix])
            grid[f"{alpha}/{gamma}"] = wape(matrix[:, split - 56:split], forecasts[:, split - 56:split])
    best = min(grid, key=lambda k: grid[k])
    print(f"weights on history (alpha/gamma -> WAPE of the 8 weeks before the split): best {best} "
          f"({grid[best]:.3f}); the service runs {ALPHA}/{GAMMA} ({grid.get(f'{ALPHA}/{GAMMA}', float('nan')):.3f})",
          flush=True)
    if args.tune_only:
        for weights, value in sorted(grid.items(), key=lambda item: item[1]):
            print(f"  {weights:<10} {value:.3f}")
        return 0

    ours_ahead, ours_weekly = zip(*(online_forecasts(y, first, week_starts, alpha=ALPHA, gamma=GAMMA) for y in matrix),
                                  strict=True)
    ours_ahead, ours_weekly = np.array(ours_ahead), np.array(ours_weekly)
    naive = np.array([seasonal_naive(y, week_starts) for y in matrix])
    ets_started = time.perf_counter()
    ets = np.array([auto_ets(y, week_starts) for y in matrix])
    ets_seconds = time.perf_counter() - ets_started
    actual = matrix[:, split:]
    rows: dict[str, dict[str, float]] = {}
    for name, forecast in (("online forecaster, weekly issue (same information as the anchors)", ours_weekly),
                           ("online forecaster, 1 day ahead (as the service runs)", ours_ahead),
                           ("seasonal naive (same weekday last week)", naive),
                           ("statsforecast AutoETS(season 7), refit weekly", ets)):
        rows[name] = {"daily_wape": wape(actual, forecast[:, split:]),
                      "weekly_wape": weekly_wape(matrix, forecast, split)}
    names = list(rows)
    print(f"\nWAPE on {len(top)} SKUs, {actual.shape[1]} test days ({args.split} .. {last})")
    print(f"  {'':<68} {'daily':>7} {'weekly':>7}")
    for name in names:
        print(f"  {name:<68} {rows[name]['daily_wape']:>7.3f} {rows[name]['weekly_wape']:>7.3f}")
    ours, naive_row, ets_row = rows[names[0]], rows[names[2]], rows[names[3]]
    verdicts = {
        "better than seasonal naive (daily)": ours["daily_wape"] < naive_row["daily_wape"],
        "better than seasonal naive (weekly)": ours["weekly_wape"] < naive_row["weekly_wape"],
        "within 10% of AutoETS (daily)": ours["daily_wape"] <= 1.10 * ets_row["daily_wape"],
        "within 10% of AutoETS (weekly)": ours["weekly_wape"] <= 1.10 * ets_row["weekly_wape"],
    }
    verdicts = {label: bool(ok) for label, ok in verdicts.items()}
    print("\ntargets (our weekly-issued forecasts, the like-for-like comparison):")
    for label, ok in verdicts.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {label}")
    print(f"\nAutoETS fits: {len(top) * len(week_starts):,} in {ets_seconds:.0f} s; "
          f"whole run {time.perf_counter() - started:.0f} s")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "measured_at": datetime.now().astimezone().isoformat(timespec="seconds"), "skus": len(top),
        "first_day": first.isoformat(), "last_day": last.isoformat(), "split": args.split.isoformat(),
        "weekly_refits": len(week_starts), "netting": stats, "service_weights": {"alpha": ALPHA, "gamma": GAMMA},
        "weight_grid_on_history": grid, "wape": rows, "targets": verdicts,
        "autoets_seconds": round(ets_seconds, 1)}, indent=2) + "\n")
    print(f"results: {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
