"""member-profile against a pandas batch anchor, over the whole Online Retail file.

    .venv/bin/python bench/profile_exactness.py [--dataset PATH] [--batch N]

The issue's requirement: after replaying all of `online_retail.csv.gz`, every member's frequency,
monetary and last purchase equals a pandas batch computation over the same file (the replay's
documented rule applied), for all 4,372 customers.

1. starts the embedded stack, publishes the whole file onto a fresh `<prefix>pos.sales.v1` with
   `replay_kafka` (the `load_sales` mapping), starts `python -m member_profile`, waits for lag 0;
2. reads every member from `GET /v1/members` (pages of 500);
3. computes the anchor with pandas straight from the raw CSV (independent of `load_sales`), with
   exact `Decimal` money from the text:
   - rows kept: UnitPrice >= 0; a negative Quantity only inside a `C` invoice; a CustomerID;
   - frequency: distinct non-`C` invoices per customer;
   - monetary: sum of Quantity x UnitPrice over kept rows (`C` rows are negative);
   - last purchase: an invoice happens at its earliest InvoiceDate (Europe/London wall time), the
     member's last purchase is the latest such invoice time, compared as a UTC instant;
4. prints the member counts, how many match on all three fields, and up to 20 mismatches.

It always exits 0 (it is a report), 2 when the dataset is absent. Results also go to
`bench/results/profile_exactness.json`. The helpers here (stack, publish, catch-up, fetch) are
reused by `bench/member_profile_throughput.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATASET = REPO.parent / "shared" / "datasets" / "online_retail.csv.gz"
RESULTS = HERE / "results" / "profile_exactness.json"
OPS = {"x-api-key": "dev-ops"}
SHOP_TIME_ZONE = "Europe/London"
DOCUMENTED_CUSTOMERS = 4_372
SHOW_MISMATCHES = 20

Figures = tuple[int, Decimal, datetime | None]  # frequency, monetary, last purchase (UTC)


# ---------------------------------------------------------------------------------------------
# The anchor: pandas over the raw CSV


@dataclass
class Anchor:
    figures: dict[str, Figures]
    rows_read: int
    rows_kept: int
    excluded_negative_price: int
    excluded_stock_writeoff: int
    excluded_anonymous: int
    invoices_with_several_times: int
    # members whose latest row time differs from their latest invoice time (earliest row per invoice)
    per_row_max_differs: dict[str, tuple[datetime, datetime]] = field(default_factory=dict)
    seconds: float = 0.0


def anchor_from_csv(path: Path) -> Anchor:
    import numpy as np
    import pandas as pd

    started = time.perf_counter()
    rows = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    invoice = rows["InvoiceNo"].str.strip()
    customer = rows["CustomerID"].str.strip()
    quantity = rows["Quantity"].str.strip().astype("int64")
    price = rows["UnitPrice"].str.strip().map(Decimal)  # exact, from the text
    is_return = invoice.str.startswith("C")

    # London wall time; an hour that happens twice reads as summer time (fold=0), a skipped one
    # moves forward, as zoneinfo's fold=0 does. The UCI file has neither.
    wall = pd.to_datetime(rows["InvoiceDate"].str.strip(), format="ISO8601")
    local = wall.dt.tz_localize(SHOP_TIME_ZONE, ambiguous=np.ones(len(wall), dtype=bool),
                                nonexistent=pd.Timedelta(hours=1))
    at = local.dt.tz_convert("UTC")
    # An invoice happens at its earliest row, whichever rows the rule keeps.
    invoice_at = at.groupby(invoice).transform("min")
    several_times = int((at.groupby(invoice).nunique() > 1).sum())

    negative_price = price.map(lambda p: p < 0).astype(bool)
    writeoff = (quantity < 0) & ~is_return & ~negative_price
    anonymous = (customer == "") & ~negative_price & ~writeoff
    keep = ~negative_price & ~writeoff & ~anonymous & (quantity != 0)

    kept = pd.DataFrame({"member": customer[keep], "invoice": invoice[keep], "is_return": is_return[keep],
                         "quantity": quantity[keep], "price": price[keep], "invoice_at": invoice_at[keep],
                         "row_at": at[keep]})
    monetary: dict[str, Decimal] = defaultdict(Decimal)
    for member, qty, unit in zip(kept["member"], kept["quantity"], kept["price"], strict=True):
        monetary[member] += qty * unit  # a C row's quantity is negative: money handed back
    sales = kept[~kept["is_return"]]
    frequency = sales.groupby("member")["invoice"].nunique()
    last_invoice = sales.groupby("member")["invoice_at"].max()
    last_row = sales.groupby("member")["row_at"].max()

    figures: dict[str, Figures] = {}
    for member, money in monetary.items():
        last = last_invoice.get(member)
        figures[member] = (int(frequency.get(member, 0)), money, None if last is None else last.to_pydatetime())
    differs = {m: (last_invoice[m].to_pydatetime(), last_row[m].to_pydatetime())
               for m in last_invoice.index if last_invoice[m] != last_row[m]}
    return Anchor(figures=figures, rows_read=len(rows), rows_kept=int(keep.sum()),
                  excluded_negative_price=int(negative_price.sum()), excluded_stock_writeoff=int(writeoff.sum()),
                  excluded_anonymous=int(anonymous.sum()), invoices_with_several_times=several_times,
                  per_row_max_differs=differs, seconds=time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------
# The system: stack, publish, member-profile, catch-up, fetch (shared with the throughput bench)


def require_dataset(path: Path) -> None:
    if not path.exists():
        print(f"{path} is absent: this bench needs the team's ../shared/datasets/online_retail.csv.gz "
              "(pass --dataset PATH)", file=sys.stderr)
        sys.exit(2)


def start_stack(work: Path) -> Any:
    from crm_shared.embedded import EmbeddedStack

    stack = EmbeddedStack.create(work / "stack")
    print(f"starting the embedded stack in {stack.state_dir} ...", flush=True)
    stack.start()
    return stack


@dataclass
class Published:
    prefix: str
    topic: str
    events: int
    lines: int
    members: int
    load_seconds: float
    publish_seconds: float


def publish_file(bootstrap: str, dataset: Path, *, prefix: str, partitions: int) -> Published:
    """The whole file onto `<prefix>pos.sales.v1`, the way `crm replay --via kafka` does it."""
    from crm_shared.datasets.online_retail import load_sales
    from crm_shared.kafka import ensure_topics
    from crm_shared.replay import replay_kafka
    from crm_shared.topics import POS_SALES

    started = time.perf_counter()
    sales, summary = load_sales(dataset)
    loaded = time.perf_counter() - started
    asyncio.run(ensure_topics(bootstrap, prefix=prefix, partitions=partitions))
    outcome = asyncio.run(replay_kafka(sales, bootstrap=bootstrap, topic_prefix=prefix, progress=False))
    print(f"  published {outcome.accepted:,} events ({outcome.lines:,} lines, {summary.members:,} members) "
          f"to {POS_SALES.qualified(prefix)} in {outcome.seconds:.1f} s (load_sales {loaded:.1f} s)", flush=True)
    return Published(prefix, POS_SALES.qualified(prefix), outcome.accepted, outcome.lines, summary.members, loaded,
                     outcome.seconds)


def group_of(prefix: str) -> str:
    return f"{prefix}member-profile.sales"


def start_member_profile(stack: Any, work: Path, prefix: str, *, batch: int | None,
                         extra_env: dict[str, str] | None = None) -> Any:
    from crm_shared.testing import StackEndpoints, start_service

    endpoints = StackEndpoints(stack.kafka.bootstrap, stack.postgres.url, stack.redis.url, stack)
    env = {"MEMBER_PROFILE_SCHEMA_NAME": f"member_profile_{uuid.uuid4().hex[:8]}", **(extra_env or {})}
    if batch is not None:
        env["MEMBER_PROFILE_CONSUMER_BATCH"] = str(batch)
    return start_service("member_profile", endpoints, work, prefix=prefix, extra_env=env)


def consumer_counters(url: str, group: str) -> dict[str, float]:
    """The idempotent consumer's Prometheus counters for one group: applied, duplicate, dead_lettered, batches."""
    return groups_counters(url, [group])[group]


def groups_counters(url: str, groups: list[str]) -> dict[str, dict[str, float]]:
    """`consumer_counters` of several groups of one service, from one read of its `/metrics`."""
    from crm_shared.system import consumer_counters as every_group

    found = every_group(url)
    return {group: found.get(group, {}) for group in groups}


def wait_for_lag_zero(bootstrap: str, group: str, topic: str, timeout: float) -> float:
    """Seconds it took until the group's committed offsets reach the log end."""
    from crm_shared.kafka import consumer_lag

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if asyncio.run(consumer_lag(bootstrap, group, [topic])).get(topic) == 0:
            return time.monotonic() - started
        time.sleep(0.5)
    raise TimeoutError(f"{group} still lagging on {topic} after {timeout:.0f}s")


def fetch_members(url: str) -> dict[str, dict[str, Any]]:
    members: dict[str, dict[str, Any]] = {}
    offset = 0
    while True:
        page = httpx.get(f"{url}/v1/members", params={"limit": 500, "offset": offset}, headers=OPS, timeout=60)
        page.raise_for_status()
        batch = page.json()["members"]
        for member in batch:
            members[member["member_id"]] = member
        if len(batch) < 500:
            return members
        offset += 500


def served_figures(members: dict[str, dict[str, Any]]) -> dict[str, Figures]:
    out: dict[str, Figures] = {}
    for member_id, member in members.items():
        last = member["last_purchase_at"]
        out[member_id] = (int(member["frequency"]), Decimal(member["monetary"]),
                          None if last is None else datetime.fromisoformat(last.replace("Z", "+00:00")))
    return out


# ---------------------------------------------------------------------------------------------
# The comparison


FIELDS = ("frequency", "monetary", "last_purchase_at")


def _show(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return "absent" if value is None else str(value)


def compare(anchor: dict[str, Figures], served: dict[str, Figures]) -> dict[str, Any]:
    matching = 0
    mismatches: list[dict[str, str]] = []
    by_field: dict[str, int] = defaultdict(int)
    for member in sorted(anchor, key=lambda m: (len(m), m)):
        expected, got = anchor[member], served.get(member)
        if got is None:
            by_field["missing"] += 1
            mismatches.append({"member": member, "field": "(member)", "anchor": "present", "served": "absent"})
            continue
        wrong = [(name, a, s) for name, a, s in zip(FIELDS, expected, got, strict=True) if a != s]
        if not wrong:
            matching += 1
        for name, a, s in wrong:
            by_field[name] += 1
            mismatches.append({"member": member, "field": name, "anchor": _show(a), "served": _show(s)})
    extra = sorted(set(served) - set(anchor))
    for member in extra:
        by_field["extra"] += 1
        mismatches.append({"member": member, "field": "(member)", "anchor": "absent", "served": "present"})
    return {"anchor_members": len(anchor), "served_members": len(served), "matching": matching,
            "mismatched_members": len(anchor) - matching + len(extra), "mismatches_by_field": dict(by_field),
            "mismatches": mismatches}


def report_lines(anchor: Anchor, outcome: dict[str, Any]) -> list[str]:
    lines = [f"anchor (pandas over the raw CSV, {anchor.seconds:.1f} s): {anchor.rows_read:,} rows read, "
             f"{anchor.rows_kept:,} kept; excluded {anchor.excluded_negative_price:,} negative-price, "
             f"{anchor.excluded_stock_writeoff:,} stock write-off, {anchor.excluded_anonymous:,} anonymous rows",
             f"members in the anchor       {outcome['anchor_members']:,}"
             + ("" if outcome["anchor_members"] == DOCUMENTED_CUSTOMERS else f"  (documented: {DOCUMENTED_CUSTOMERS:,})"),
             f"members served              {outcome['served_members']:,}",
             f"match on all three fields   {outcome['matching']:,} / {outcome['anchor_members']:,}"
             f"  ({'EVERY MEMBER MATCHES' if outcome['mismatched_members'] == 0 else 'MISMATCHES FOUND'})"]
    if outcome["mismatches"]:
        lines.append(f"mismatches by field: {outcome['mismatches_by_field']}; the first {SHOW_MISMATCHES}:")
        lines.append(f"  {'member':<8} {'field':<17} {'anchor':<32} served")
        for m in outcome["mismatches"][:SHOW_MISMATCHES]:
            lines.append(f"  {m['member']:<8} {m['field']:<17} {m['anchor']:<32} {m['served']}")
    differs = anchor.per_row_max_differs
    lines.append(f"last purchase: {anchor.invoices_with_several_times} invoices have rows at more than one time; "
                 f"the naive per-row max differs from the per-invoice (earliest row) max for {len(differs)} member(s)"
                 + (": " + ", ".join(f"{m} ({inv.isoformat()} vs {row.isoformat()})"
                                     for m, (inv, row) in sorted(differs.items())[:5]) if differs else ""))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--batch", type=int, default=None, help="MEMBER_PROFILE_CONSUMER_BATCH (default: the service's)")
    parser.add_argument("--partitions", type=int, default=6, help="partitions of pos.sales.v1 (default 6)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for lag 0 (default 1800)")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    require_dataset(args.dataset)

    work = Path(tempfile.mkdtemp(prefix="crm-bench-exactness-"))
    started = datetime.now(UTC)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} (shared; timings are noisy)")
    stack = start_stack(work)
    try:
        prefix = f"bx{uuid.uuid4().hex[:6]}."
        published = publish_file(stack.kafka.bootstrap, args.dataset, prefix=prefix, partitions=args.partitions)
        service = start_member_profile(stack, work, prefix, batch=args.batch)
        try:
            waited = wait_for_lag_zero(stack.kafka.bootstrap, group_of(prefix), published.topic, args.timeout)
            print(f"  member-profile caught up (lag 0) {waited:.1f} s after it answered /healthz", flush=True)
            counters = consumer_counters(service.url, group_of(prefix))
            members = fetch_members(service.url)
        finally:
            service.stop()
    finally:
        stack.discard()  # and its data (CRM_KEEP_STACK_STATE=1 keeps it)

    anchor = anchor_from_csv(args.dataset)
    outcome = compare(anchor.figures, served_figures(members))
    lines = report_lines(anchor, outcome)
    lines.insert(1, f"consumer counters: {counters}")
    print("\n".join(["", "=" * 100, f"member-profile exactness vs pandas anchor: {args.dataset.name}", "=" * 100,
                     *lines, "=" * 100]))
    result = {"when": started.isoformat(timespec="seconds"), "dataset": str(args.dataset),
              "published": published.__dict__, "consumer_counters": counters, "anchor_seconds": anchor.seconds,
              "rows": {"read": anchor.rows_read, "kept": anchor.rows_kept,
                       "excluded_negative_price": anchor.excluded_negative_price,
                       "excluded_stock_writeoff": anchor.excluded_stock_writeoff,
                       "excluded_anonymous": anchor.excluded_anonymous},
              "per_row_max_differs": {m: [a.isoformat(), b.isoformat()] for m, (a, b) in anchor.per_row_max_differs.items()},
              "invoices_with_several_times": anchor.invoices_with_several_times,
              **outcome, "report": lines}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(f"results written to {args.json}; logs in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
