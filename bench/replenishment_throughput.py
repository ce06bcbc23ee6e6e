"""replenishment's stock-update throughput on the embedded stack, beside the raw consume rate.

    .venv/bin/python bench/replenishment_throughput.py [--batch N] [--partitions 6] [--timeout 900]

One run:
1. publishes a catalog with supplier terms for every Online Retail SKU (crm_shared.supplier_terms),
   then the whole file (24,562 events, 540,571 lines) to a fresh `<prefix>pos.sales.v1`, THEN starts
   `python -m replenishment` and times it until every sale event is applied (`/metrics`, polled every
   0.1 s) and its group's lag is 0. Everything the service does per batch is in the figure: stock,
   sell-through, forecasts, reorder points, needs, purchase orders, low-stock events (outbox);
2. the raw aiokafka consume rate of the same topic (a plain group committing after each `getmany`,
   no processing) in the same run (bench/member_profile_throughput.py's `raw_consume`);
3. checks the result: on hand per store x SKU equals the batch computation over the file, for every
   pair (a throughput figure for wrong answers is worth nothing).
Target (issue 6): >= 10,000 sale lines/s of stock updates on the embedded stack. The machine is
shared and has 2 cores: service, PostgreSQL and broker compete, so figures are noisy.
Results: bench/results/replenishment_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from crm_shared.system import records_seen  # noqa: E402
from member_profile_throughput import raw_consume  # noqa: E402
from profile_exactness import (  # noqa: E402
    DATASET,
    groups_counters,
    require_dataset,
    start_stack,
    wait_for_lag_zero,
)

RESULTS = HERE / "results" / "replenishment_throughput.json"
TARGET_LINES_PER_S = 10_000.0
OPS = {"x-api-key": "dev-ops"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--batch", type=int, default=None, help="consumer batch (default: the service's)")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--py-spy", default=None, help="path of py-spy: record the service for 40 s (raw profile)")
    args = parser.parse_args(argv)
    require_dataset(args.dataset)

    from crm_shared.datasets.online_retail import load_sales
    from crm_shared.kafka import ensure_topics
    from crm_shared.replay import publish_catalog, replay_kafka
    from crm_shared.supplier_terms import products_from_sales
    from crm_shared.testing import StackEndpoints, start_service
    from crm_shared.topics import POS_SALES

    sales, _ = load_sales(args.dataset)
    lines = sum(len(s.lines) for s in sales)
    work = Path(tempfile.mkdtemp(prefix="crm-bench-replenishment-"))
    stack = start_stack(work)
    results: dict[str, Any] = {"measured_at": datetime.now().astimezone().isoformat(timespec="seconds"),
                               "events": len(sales), "lines": lines, "partitions": args.partitions}
    try:
        bootstrap = stack.kafka.bootstrap
        prefix = f"rt{uuid.uuid4().hex[:6]}."
        asyncio.run(ensure_topics(bootstrap, prefix=prefix, partitions=args.partitions))
        catalog = products_from_sales(sales)
        asyncio.run(publish_catalog(catalog, bootstrap=bootstrap, topic_prefix=prefix, progress=False))
        outcome = asyncio.run(replay_kafka(sales, bootstrap=bootstrap, topic_prefix=prefix, progress=False))
        topic = POS_SALES.qualified(prefix)
        print(f"published {len(catalog):,} products and {outcome.accepted:,} sale events ({lines:,} lines) "
              f"in {outcome.seconds:.1f} s", flush=True)
        group = f"{prefix}replenishment.sales"
        # Sell-through (daily units per store x SKU) has its own group on the same topic: the figure
        # waits for both, and reports when the stock group alone was done.
        through_group = f"{prefix}replenishment.sell-through"
        env = {"REPLENISHMENT_SCHEMA_NAME": f"replenishment_{uuid.uuid4().hex[:8]}"}
        if args.batch:
            env["REPLENISHMENT_CONSUMER_BATCH"] = str(args.batch)
        endpoints = StackEndpoints(bootstrap, stack.postgres.url, stack.redis.url, stack)
        started = time.perf_counter()
        service = start_service("replenishment", endpoints, work, prefix=prefix, extra_env=env,
                                partitions=args.partitions)
        healthy = time.perf_counter()
        spy = None
        if args.py_spy:
            import subprocess

            assert service.process is not None
            spy = subprocess.Popen([args.py_spy, "record", "--pid", str(service.process.pid), "--duration", "40",
                                    "--format", "raw", "--nonblocking", "--output", str(work / "py-spy.raw")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            print(f"py-spy recording 40 s into {work / 'py-spy.raw'}", flush=True)
        first_applied: float | None = None
        applied_at_first = 0.0
        stock_done: float | None = None
        try:
            while True:
                now = time.perf_counter()
                both = groups_counters(service.url, [group, through_group])  # one /metrics read a poll
                counters = both[group]
                seen = min(records_seen(counters), records_seen(both[through_group]))
                if seen > 0 and first_applied is None:
                    first_applied, applied_at_first = now, seen
                if stock_done is None and records_seen(counters) >= len(sales):
                    stock_done = now
                if seen >= len(sales):
                    break
                if now - healthy > args.timeout:
                    raise TimeoutError(f"replenishment applied {seen:,.0f} of {len(sales):,} in {args.timeout:.0f}s")
                time.sleep(0.1)
            done = time.perf_counter()
            if spy is not None:
                spy.wait(120)
            wait_for_lag_zero(bootstrap, group, topic, 120)
            wait_for_lag_zero(bootstrap, through_group, topic, 120)
            assert first_applied is not None and stock_done is not None
            steady_lines = lines * (len(sales) - applied_at_first) / len(sales)
            results["service"] = {
                "from_process_start_s": done - started, "from_healthz_s": done - healthy,
                "lines_per_s_from_healthz": lines / (done - healthy),
                "lines_per_s_steady": steady_lines / (done - first_applied) if done > first_applied else None,
                "stock_group_done_from_healthz_s": stock_done - healthy,
                "dead_lettered": counters.get("dead_lettered", 0.0), "batch": args.batch,
                "batches": {"stock": counters.get("batches", 0.0), "sell_through": both[through_group].get("batches", 0.0)}}
            # Exactness: on hand per store x SKU against the file, every pair.
            expected: dict[tuple[str, str], int] = defaultdict(int)
            for sale in sales:
                for line in sale.lines:
                    expected[(sale.store_id, line.sku)] += line.quantity if sale.kind == "return" else -line.quantity
            mismatches = asyncio.run(compare_stock(service.url, expected))
            results["exactness"] = {"pairs": len(expected), "mismatches": len(mismatches), "examples": mismatches[:5]}
            orders = httpx.get(f"{service.url}/v1/orders", params={"limit": 1000}, headers=OPS, timeout=60).json()
            results["orders_listed"] = len(orders["orders"])
        finally:
            service.stop()
        results["raw_consume"] = asyncio.run(raw_consume(bootstrap, topic, len(sales), lines, batch=args.batch or 2000,
                                                         decode=False))
    finally:
        stack.discard()  # and its data (CRM_KEEP_STACK_STATE=1 keeps it)

    svc, raw = results["service"], results["raw_consume"]
    rate = svc["lines_per_s_from_healthz"]
    ok = rate >= TARGET_LINES_PER_S and results["exactness"]["mismatches"] == 0
    print(f"\nreplenishment stock updates, {len(sales):,} events / {lines:,} lines, {args.partitions} partitions")
    print(f"  service, from /healthz to all applied   {svc['from_healthz_s']:6.1f} s  {rate:>9,.0f} lines/s "
          f"(steady from the first batch {svc['lines_per_s_steady'] or 0:,.0f}/s; from process start "
          f"{lines / svc['from_process_start_s']:,.0f}/s; the stock group alone done after "
          f"{svc['stock_group_done_from_healthz_s']:.1f} s, sell-through's group after {svc['from_healthz_s']:.1f} s)")
    print(f"  records per batch: stock {len(sales) / max(svc['batches']['stock'], 1):,.0f}, sell-through "
          f"{len(sales) / max(svc['batches']['sell_through'], 1):,.0f} (batch maximum {args.batch or 2000:,})")
    print(f"  raw aiokafka consume (no processing)     {raw['from_start_s']:6.1f} s  {raw['lines_per_s']:>9,.0f} lines/s"
          f"   -> service = {rate / raw['lines_per_s']:.0%} of it")
    print(f"  exactness: on hand of {results['exactness']['pairs']:,} store x SKU pairs, "
          f"{results['exactness']['mismatches']} mismatches; {results['orders_listed']} purchase orders listed (first 1,000)")
    print(f"  {'PASS' if ok else 'FAIL'}  >= {TARGET_LINES_PER_S:,.0f} sale lines/s with exact stock")
    results["target_lines_per_s"] = TARGET_LINES_PER_S
    results["pass"] = ok
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"results: {RESULTS.relative_to(HERE.parent)}")
    return 0


async def compare_stock(url: str, expected: dict[tuple[str, str], int]) -> list[str]:
    """Every store x SKU read back over HTTP (concurrently, a few at a time)."""
    mismatches: list[str] = []
    semaphore = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=url, headers=OPS, timeout=60) as client:

        async def check(store_id: str, sku: str, on_hand: int) -> None:
            async with semaphore:
                response = await client.get(f"/v1/stock/{store_id}/{sku}")
            served = response.json().get("on_hand") if response.status_code == 200 else response.status_code
            if served != on_hand:
                mismatches.append(f"{store_id}/{sku}: served {served}, expected {on_hand}")

        await asyncio.gather(*(check(s, k, v) for (s, k), v in expected.items()))
    return mismatches


if __name__ == "__main__":
    sys.exit(main())
