"""The whole system, the whole year: every Online Retail invoice through all five services.

    .venv/bin/python bench/e2e.py [--dataset PATH] [--partitions 6] [--timeout 1800]

The issue's targets: all of `online_retail.csv.gz` (541,909 rows, 24,562 sales and returns) through
all five services on the embedded stack in < 60 s on 2 cores, memory not growing per event beyond
the state tables; and afterwards every member's figures equal to a pandas batch computation.

One run, on a fresh embedded stack (tansu broker, PostgreSQL 16, Redis):
1. the ceiling: the replay's exact bytes (`sale_recorded` + `serde.encode` of every sale) produced
   raw to a scratch topic, then consumed raw by a plain consumer group (commit per `getmany`, no
   decoding): the broker's produce and consume rates on this machine, now;
2. all five services started as processes (`crm_shared.system.System`), the catalog published with
   supplier terms generated from a seed (so replenishment can raise purchase orders), every member
   enrolled with consent (so the notifier may send offers); none of this is timed;
3. timed: `replay_kafka` of the whole file onto `pos.sales.v1`, until every consumer group of every
   service has lag 0 (sampled every second, no look-ahead, over clients that stay open:
   `crm_shared.kafka.LagWatch`); per service, the time its last group reached lag 0 and the records
   its groups took in (their `crm_consumer_events_*` counters; the gateway's live-stats group counts
   the sales); peak memory (PSS, shared pages counted once) per process tree, sampled every 2 s
   (PostgreSQL's every 10 s), beside what it held before the replay;
4. exactness: every member from member-profile against `bench/profile_exactness.py`'s pandas anchor
   (read before step 5 adds sales);
5. steady traffic after the year: the file's last 28 days again as the weeks that follow (each sale
   shifted by 28, 56, ... days, new sale ids; weekdays and hours kept), produced at `--steady-rate`
   sales/s for `--steady-seconds`, once the segmenter has published basket rules. Measured there:
   - sale -> offer latency: each offer on `marketing.offers.v1` that a steady sale triggered
     (`reason.source_event_id`), its record timestamp (the notifier's relay publishing it) minus the
     sale's record timestamp on `pos.sales.v1` (the producer sending it). During the bulk replay
     (reported too) this is queueing behind the backlog, and rules come only as it ends;
   - memory per event: PSS of every process when the steady traffic starts and once every group is
     back at lag 0, divided by the sales it took in; beside it the database's own growth (the state
     tables), which is where per-event state belongs. A service's figure is its process tree; the
     segmenter's own process is shown alone as well, since its rule-mining worker's memory comes and
     goes with each look (`segmenter/mining.py`).

Prints a table (figure | value | anchor | target) and saves `bench/results/e2e.json`. Exits 0 (a
report), 2 when the dataset is absent. The machine is shared: other processes' load is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from crm_shared.system import records_seen  # noqa: E402
from profile_exactness import (  # noqa: E402  (bench scripts import each other by file)
    DATASET,
    anchor_from_csv,
    compare,
    fetch_members,
    require_dataset,
    served_figures,
)

RESULTS = HERE / "results" / "e2e.json"
TARGET_SECONDS = 60.0
# One memory reading (PSS of every process: ~70 with PostgreSQL's backends) takes ~0.45 s of CPU on
# this 2-core machine; read every 0.5 s, the sampler alone took ~a quarter of the CPU the system under
# test had. Every 2 s it costs ~a tenth of that and still sees peaks that last.
SAMPLE_RSS_SECONDS = 2.0
# PostgreSQL's tree is most of a reading's cost (its ~40 backends each map the shared buffers): every
# 5th reading (10 s), the last value carried over in between.
SAMPLED_LESS_OFTEN = ("postgresql",)
SAMPLE_POSTGRES_EVERY = 5
SAMPLE_LAG_SECONDS = 1.0


# ---------------------------------------------------------------------------------------------
# The ceiling: raw produce and consume of the same bytes


async def raw_produce(bootstrap: str, topic: str, payloads: list[tuple[bytes, bytes]]) -> float:
    from crm_shared.kafka import make_producer

    producer = make_producer(bootstrap, client_id="e2e-raw", linger_ms=20, max_batch_size=1024 * 1024,
                             max_request_size=8 * 1024 * 1024)
    await producer.start()
    try:
        started = time.perf_counter()
        pending = []
        for key, value in payloads:
            pending.append(await producer.send(topic, value=value, key=key))
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        return time.perf_counter() - started
    finally:
        await producer.stop()


async def raw_consume(bootstrap: str, topic: str, expected: int) -> float:
    from crm_shared.kafka import make_consumer

    consumer = make_consumer(bootstrap, topic, group_id=f"{topic}.raw-consume", client_id="e2e-raw-consume")
    await consumer.start()
    try:
        started = time.perf_counter()
        seen = 0
        while seen < expected:
            batches = await consumer.getmany(timeout_ms=500, max_records=2000)
            seen += sum(len(records) for records in batches.values())
            if batches:
                await consumer.commit()
        return time.perf_counter() - started
    finally:
        await consumer.stop()


# ---------------------------------------------------------------------------------------------
# Sampling while the replay runs


def tree_memory(pid: int, kind: str = "pss") -> int:
    """PSS of a process and its children: shared pages (PostgreSQL's shared buffers, the code of
    forked workers) counted once across them, not once per process as RSS would. `kind="uss"`: the
    pages only each of them holds (PostgreSQL: the backends' own memory, without the shared buffers)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for process in processes:
        try:
            total += getattr(process.memory_full_info(), kind)
        except psutil.Error:
            continue
    return total


# The segmenter mines basket rules in a worker process (segmenter.mining) whose memory comes and goes
# with each look: its tree is shown, and its own process alone beside it.
OWN_PROCESS_ALSO = ("segmenter",)


def own_process(name: str) -> str:
    return f"{name}, its own process alone"


def process_memory(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_full_info().pss)
    except psutil.Error:
        return 0


def tree_size(pid: int) -> int:
    """How many processes (PostgreSQL: the postmaster, its helpers and one backend per connection)."""
    try:
        return 1 + len(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return 0


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, its live children and the children it has reaped."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
            if process.pid == pid:
                total += times.children_user + times.children_system
        except psutil.Error:
            continue
    return total


class WatchedLags:
    """Every group's lag, as a plain call for the sampler's thread: a `LagWatch` (clients that stay open)
    on an event loop of its own. Asking `consumer_lag` for 15 groups every second opened 30 clients a
    second and fetched up to a megabyte per group each time, on the broker and the machine measured:
    ~0.13 CPU s per look in this process alone, against ~0.01 s for the watch."""

    def __init__(self, bootstrap: str, groups: dict[str, list[str]]) -> None:
        from crm_shared.kafka import LagWatch

        self._loop = asyncio.new_event_loop()
        self._watch = self._loop.run_until_complete(LagWatch(bootstrap, groups).start())

    def __call__(self) -> dict[str, int]:
        return self._loop.run_until_complete(self._watch.read())

    def close(self) -> None:
        self._loop.run_until_complete(self._watch.stop())
        self._loop.close()


@dataclass
class Sampler:
    """Memory (PSS) per process tree every `SAMPLE_RSS_SECONDS` (PostgreSQL's every `SAMPLE_POSTGRES_EVERY`th
    reading) and consumer lag per group every second, in threads."""

    pids: dict[str, int]
    lag_reader: Any
    memory_peak: Counter[str] = field(default_factory=Counter)
    memory_series: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    lag_series: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    memory_read_seconds: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    _stop: threading.Event = field(default_factory=threading.Event)

    def memory_now(self, previous: dict[str, int] | None = None) -> dict[str, int]:
        """Every tree's PSS; with `previous`, PostgreSQL's tree is carried over from it (read less often)."""
        now = {name: previous[name] if previous and name in SAMPLED_LESS_OFTEN and name in previous else tree_memory(pid)
               for name, pid in self.pids.items()}
        for name in OWN_PROCESS_ALSO:
            if name in self.pids:
                now[own_process(name)] = process_memory(self.pids[name])
        return now

    def _memory_loop(self) -> None:
        readings = 0
        while not self._stop.is_set():
            started = time.perf_counter()
            last = self.memory_series[-1][1] if self.memory_series and readings % SAMPLE_POSTGRES_EVERY else None
            now = self.memory_now(last)
            readings += 1
            self.memory_read_seconds.append(time.perf_counter() - started)
            for name, held in now.items():
                self.memory_peak[name] = max(self.memory_peak[name], held)
            self.memory_series.append((time.monotonic() - self.started, now))
            self._stop.wait(SAMPLE_RSS_SECONDS)

    def _lag_loop(self) -> None:
        while not self._stop.is_set():
            at = time.monotonic() - self.started
            self.lag_series.append((at, self.lag_reader()))
            self._stop.wait(max(0.0, SAMPLE_LAG_SECONDS - (time.monotonic() - self.started - at)))

    def start(self) -> Sampler:
        self.started = time.monotonic()
        self._threads = [threading.Thread(target=self._memory_loop, daemon=True),
                         threading.Thread(target=self._lag_loop, daemon=True)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def wait_until_all_zero(self, not_before: float, timeout: float, settle: float) -> None:
        """Until every group's lag has been 0 on the samples of `settle` seconds (the outbox relays
        publish what the last batches produced in between); the one lag poller is the sampler's."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.25)
            recent = [(at, lags) for at, lags in self.lag_series if at >= not_before]
            zero_from = None
            for at, lags in recent:
                if lags and all(lag == 0 for lag in lags.values()):
                    zero_from = at if zero_from is None else zero_from
                else:
                    zero_from = None
            if zero_from is not None and recent[-1][0] - zero_from >= settle:
                return
        raise TimeoutError(f"not at lag 0 after {timeout:.0f} s: {self.lag_series[-1] if self.lag_series else None}")

    def caught_up_at(self, groups: list[str], not_before: float) -> float | None:
        """The first sample at or after `not_before` from which these groups' lag stayed 0."""
        last_behind = None
        for at, lags in self.lag_series:
            if any(lags.get(g, -1) != 0 for g in groups):
                last_behind = at
        later = [at for at, _ in self.lag_series if at >= not_before and (last_behind is None or at > last_behind)]
        return later[0] if later else None


# ---------------------------------------------------------------------------------------------
# Sale -> offer latency


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def following_weeks(sales: list[Any], days: int = 28) -> Any:
    """The last `days` days of the file, again and again as the weeks after it: cycle c shifts every
    sale by c × `days` days (a whole number of weeks keeps weekdays) and suffixes its ids with `-n<c>`."""
    last = max(s.occurred_at for s in sales)
    block = [s for s in sales if s.occurred_at > last - timedelta(days=days)]
    cycle = 0
    while True:
        cycle += 1
        shift = timedelta(days=days * cycle)
        for sale in block:
            update: dict[str, Any] = {"sale_id": f"{sale.sale_id}-n{cycle}", "occurred_at": sale.occurred_at + shift}
            if sale.original_sale_id is not None:
                update["original_sale_id"] = f"{sale.original_sale_id}-n{cycle}"
            yield sale.model_copy(update=update)


async def produce_steady(bootstrap: str, prefix: str, sales: Any, rate: float,
                         seconds: float) -> tuple[int, int, float]:
    """`rate` sales per second for `seconds`, sent as a till's sales would be: one at a time, on time."""
    from crm_shared.events import sale_recorded
    from crm_shared.kafka import make_producer
    from crm_shared.serde import encode, encode_key
    from crm_shared.topics import POS_SALES

    producer = make_producer(bootstrap, client_id="e2e-steady")
    await producer.start()
    topic = POS_SALES.qualified(prefix)
    sent = lines = 0
    started = time.perf_counter()
    try:
        while (elapsed := time.perf_counter() - started) < seconds:
            due = int(elapsed * rate) + 1
            while sent < due:
                event = sale_recorded(next(sales), source="e2e-steady")
                await producer.send(topic, encode(event), key=encode_key(event.key))
                sent += 1
                lines += len(event.payload.lines)
            await asyncio.sleep(0.005)
        await producer.flush()
    finally:
        await producer.stop()
    return sent, lines, time.perf_counter() - started


def latency_figures(latencies_ms: list[float]) -> dict[str, Any]:
    if not latencies_ms:
        return {"from_sales": 0}
    return {"from_sales": len(latencies_ms), "p50_ms": percentile(latencies_ms, 0.5),
            "p99_ms": percentile(latencies_ms, 0.99), "max_ms": max(latencies_ms),
            "mean_ms": statistics.fmean(latencies_ms)}


async def offer_latencies(bootstrap: str, prefix: str, sales_expected: int) -> dict[str, Any]:
    """Sale -> offer latency of every offer a sale triggered, split into the bulk replay's sales and
    the steady traffic's (source `e2e-steady`)."""
    from crm_shared.testing import read_topic
    from crm_shared.topics import MARKETING_OFFERS, POS_SALES

    sales = await read_topic(bootstrap, POS_SALES.qualified(prefix), expected=sales_expected, timeout=120, settle=1)
    published_at: dict[str, tuple[int, bool]] = {}
    for record in sales:
        event = orjson.loads(record.value)
        published_at[event["event_id"]] = (record.timestamp, event["source"] == "e2e-steady")
    offers = await read_topic(bootstrap, MARKETING_OFFERS.qualified(prefix), expected=1, timeout=15, settle=3)
    by_trigger: Counter[str] = Counter()
    bulk_ms: list[float] = []
    steady_ms: list[float] = []
    for record in offers:
        payload = orjson.loads(record.value)["payload"]
        by_trigger[payload["reason"].get("trigger", "?")] += 1
        sale = published_at.get(str(payload["reason"]["source_event_id"]))
        if sale is not None:
            (steady_ms if sale[1] else bulk_ms).append(float(record.timestamp - sale[0]))
    return {"offers": len(offers), "by_trigger": dict(by_trigger), "bulk": latency_figures(bulk_ms),
            "steady": latency_figures(steady_ms)}


async def database_bytes(database_url: str) -> int:
    import asyncpg
    from crm_shared.system import asyncpg_dsn

    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        return int(await conn.fetchval("SELECT pg_database_size(current_database())"))
    finally:
        await conn.close()


async def postgres_backends(database_url: str) -> dict[int, str]:
    """The server process of every client connection and the name its pool gave it (each service's
    engine names its connections after its schema)."""
    import asyncpg
    from crm_shared.system import asyncpg_dsn

    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        rows = await conn.fetch("SELECT pid, application_name FROM pg_stat_activity WHERE backend_type = 'client backend' "
                                "AND pid <> pg_backend_pid()")
        return {int(r["pid"]): str(r["application_name"] or "") for r in rows}
    finally:
        await conn.close()


async def postgres_sessions(database_url: str) -> int:
    """Connections ever opened to the database (PostgreSQL counts them): a pool that closes and
    reopens connections under load shows here, at a backend start and type introspection apiece."""
    import asyncpg
    from crm_shared.system import asyncpg_dsn

    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        return int(await conn.fetchval("SELECT sessions FROM pg_stat_database WHERE datname = current_database()"))
    finally:
        await conn.close()


def process_cpu_seconds(pid: int) -> float:
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


def postgres_cpu_by_service(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                            services: list[str]) -> dict[str, float]:
    """PostgreSQL CPU seconds spent on each service's connections between two readings of
    (pid -> (application name, CPU seconds)); a connection opened in between counts from 0. What no
    live connection accounts for (closed connections, checkpointer, WAL writer, autovacuum) is the
    caller's remainder."""
    spent: Counter[str] = Counter()
    for pid, (name, cpu) in after.items():
        owner = next((s for s in services if name == s.replace("-", "_") or name.startswith(s.replace("-", "_") + "_")),
                     f"other ({name or 'unnamed'})")
        spent[owner] += max(0.0, cpu - before.get(pid, (name, 0.0))[1])
    return dict(spent)


def postgres_cpu_reading(database_url: str) -> dict[int, tuple[str, float]]:
    return {pid: (name, process_cpu_seconds(pid)) for pid, name in asyncio.run(postgres_backends(database_url)).items()}


async def deliver_open_orders(replenishment_url: str, received_at: datetime) -> dict[str, int]:
    """Every open purchase order received in full at its store (`POST /v1/receipts`), as its supplier
    would deliver it. Without deliveries every product sold in the year stays held as low stock, and
    the notifier rightly suppresses cross-sell of it (70 of 71 proposals in a run without)."""
    import httpx

    headers = {"x-api-key": "dev-ops"}
    delivered = lines = 0
    async with httpx.AsyncClient(base_url=replenishment_url, headers=headers, timeout=60) as client:
        gate = asyncio.Semaphore(8)

        async def receive(order: dict[str, Any]) -> int:
            due = [{"sku": line["sku"], "quantity": line["quantity"] - line["received"]}
                   for line in order["lines"] if line["quantity"] > line["received"]]
            if not due:
                return 0
            async with gate:
                response = await client.post("/v1/receipts", json={
                    "receipt_id": f"e2e-{order['po_id']}"[:64], "store_id": order["store_id"], "po_id": order["po_id"],
                    "received_at": received_at.isoformat(), "lines": due})
            response.raise_for_status()
            return len(due)

        while True:
            response = await client.get("/v1/orders", params={"status": "open", "limit": 1000})
            response.raise_for_status()
            orders = response.json()["orders"]
            received = await asyncio.gather(*(receive(order) for order in orders))
            if not orders or not any(received):
                break
            delivered += sum(1 for n in received if n)
            lines += sum(received)
    return {"orders": delivered, "lines": lines}


def campaign_decisions(notifier_url: str) -> dict[str, dict[str, Any]]:
    """Per campaign: offers sent, withheld (control group) and suppressed by reason, so far."""
    from crm_shared.cli import campaign_reports

    campaigns, reports = campaign_reports(notifier_url, timeout=30)
    return {campaign["campaign_id"]: {"sent": int(report["sent"]), "withheld": int(report["withheld"]),
                                      "suppressed": {k: int(v) for k, v in report["suppressed"].items()}}
            for campaign, report in zip(campaigns, reports, strict=True)}


def memory_at(sampler: Sampler, at: float) -> dict[str, int]:
    """The memory sample nearest `at` seconds into the sampler's run."""
    return min(sampler.memory_series, key=lambda sample: abs(sample[0] - at))[1]


def baskets_in_window(segmenter_url: str) -> int:
    """The segmenter's chain-wide basket window (`basket_window_days` of event time), from its metrics."""
    import httpx

    for line in httpx.get(f"{segmenter_url}/metrics", timeout=10).text.splitlines():
        if line.startswith("crm_segmenter_baskets_in_window "):
            return int(float(line.rsplit(" ", 1)[-1]))
    raise LookupError("crm_segmenter_baskets_in_window is not in the segmenter's metrics")


def decisions_between(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for campaign, now in after.items():
        was = before.get(campaign, {"sent": 0, "withheld": 0, "suppressed": {}})
        suppressed = {k: v - was["suppressed"].get(k, 0) for k, v in now["suppressed"].items()
                      if v - was["suppressed"].get(k, 0)}
        out[campaign] = {"sent": now["sent"] - was["sent"], "withheld": now["withheld"] - was["withheld"],
                         "suppressed": suppressed}
    return out


async def wait_for_rules(bootstrap: str, prefix: str, timeout: float) -> int:
    """Until the segmenter has published basket rules (it looks every 10 s); how many rule records."""
    from crm_shared.testing import read_topic
    from crm_shared.topics import ANALYTICS_ASSOCIATIONS

    return len(await read_topic(bootstrap, ANALYTICS_ASSOCIATIONS.qualified(prefix), expected=1, timeout=timeout,
                                settle=1))


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--partitions", type=int, default=6, help="partitions per topic (crm up's default: 6)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for lag 0")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--steady-rate", type=float, default=200.0,
                        help="sales/s after the year (Online Retail's sales average 22 lines)")
    parser.add_argument("--steady-seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    require_dataset(args.dataset)

    from crm_shared.datasets.online_retail import load_sales
    from crm_shared.embedded import EmbeddedStack
    from crm_shared.events import sale_recorded
    from crm_shared.kafka import ensure_topics
    from crm_shared.serde import encode, encode_key
    from crm_shared.system import System
    from crm_shared.testing import StackEndpoints
    from crm_shared.topics import POS_SALES

    when = datetime.now(UTC).isoformat(timespec="seconds")
    load_before = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, load average {load_before[0]:.2f} before the run (shared machine)")
    started = time.perf_counter()
    sales, summary = load_sales(args.dataset)
    lines = sum(len(s.lines) for s in sales)
    print(f"loaded {len(sales):,} sales and returns ({lines:,} lines, {summary.members:,} members) in "
          f"{time.perf_counter() - started:.1f} s", flush=True)
    payloads = [(encode_key(e.key), encode(e)) for e in (sale_recorded(s, source="crm-replay") for s in sales)]
    payload_bytes = sum(len(v) for _, v in payloads)

    work = Path(tempfile.mkdtemp(prefix="crm-bench-e2e-"))
    stack = EmbeddedStack.create(work / "stack")
    print(f"starting the embedded stack in {stack.state_dir} ...", flush=True)
    stack.start()
    endpoints = StackEndpoints(stack.kafka.bootstrap, stack.postgres.url, stack.redis.url, stack)
    results: dict[str, Any] = {"when": when, "cores": os.cpu_count(), "load_average_before": load_before,
                               "dataset": str(args.dataset), "events": len(sales), "lines": lines,
                               "members": summary.members, "partitions": args.partitions, "bytes": payload_bytes}
    system: System | None = None
    lags: WatchedLags | None = None
    try:
        print("[1/6] the ceiling: raw produce and raw consume of the replay's bytes", flush=True)
        raw_prefix = "e2e-raw."
        asyncio.run(ensure_topics(stack.kafka.bootstrap, prefix=raw_prefix, partitions=args.partitions,
                                  topics=[POS_SALES]))
        produce_s = asyncio.run(raw_produce(stack.kafka.bootstrap, POS_SALES.qualified(raw_prefix), payloads))
        consume_s = asyncio.run(raw_consume(stack.kafka.bootstrap, POS_SALES.qualified(raw_prefix), len(payloads)))
        results["ceiling"] = {"produce_seconds": produce_s, "consume_seconds": consume_s,
                              "produce_events_per_s": len(sales) / produce_s, "consume_events_per_s": len(sales) / consume_s,
                              "produce_mb_per_s": payload_bytes / produce_s / 1e6,
                              "consume_mb_per_s": payload_bytes / consume_s / 1e6}
        print(f"  raw produce {len(sales) / produce_s:,.0f} events/s, raw consume {len(sales) / consume_s:,.0f} events/s",
              flush=True)

        print("[2/6] five services, catalog, members (not timed)", flush=True)
        system = System.start(endpoints, work / "services", partitions=args.partitions)
        listed = system.publish_catalog(sales)
        enrolled = system.enrol((s.member_id for s in sales if s.member_id), channels=("push", "email", "sms"))
        print(f"  {listed:,} products listed, {enrolled:,} members enrolled with consent", flush=True)
        time.sleep(2)

        pids = {name: process.process.pid for name, process in system.services.items() if process.process}
        pids |= {"broker (tansu)": stack.kafka.process.pid, "postgresql": stack.postgres.process.pid,  # type: ignore[union-attr]
                 "redis": stack.redis.process.pid}  # type: ignore[union-attr]
        specs = system.specs

        lags = WatchedLags(stack.kafka.bootstrap,  # type: ignore[union-attr]
                           {system.prefix + group: [system.prefix + t for t in topics]
                            for spec in specs for group, topics in spec.consumer_groups})
        counters_before = system.counters()
        sampler = Sampler(pids, lags)
        memory_before = sampler.memory_now()
        cpu_before = {name: tree_cpu_seconds(pid) for name, pid in pids.items()}
        postgres_before = postgres_cpu_reading(stack.postgres.url)  # type: ignore[union-attr]
        sessions_before = asyncio.run(postgres_sessions(stack.postgres.url))  # type: ignore[union-attr]
        print("[3/6] timed: replay the whole file via kafka, until every group's lag is 0", flush=True)
        own_cpu_before = process_cpu_seconds(os.getpid())
        sampler.start()
        outcome = system.replay_kafka(sales, progress=True)
        published_at = time.monotonic() - sampler.started
        sampler.wait_until_all_zero(published_at, timeout=args.timeout, settle=2.0)
        sampler.stop()
        cpu_used = {name: tree_cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        bench_cpu = process_cpu_seconds(os.getpid()) - own_cpu_before
        postgres_by_service = postgres_cpu_by_service(postgres_before, postgres_cpu_reading(stack.postgres.url),  # type: ignore[union-attr]
                                                      [spec.name for spec in specs])
        # (this reading's own connection and the one above count too)
        sessions_opened = asyncio.run(postgres_sessions(stack.postgres.url)) - sessions_before  # type: ignore[union-attr]
        postgres_by_service["server (no live connection)"] = max(0.0, cpu_used["postgresql"] - sum(postgres_by_service.values()))
        groups = {spec.name: [system.prefix + g for g, _ in spec.consumer_groups] for spec in specs}
        all_groups = [g for gs in groups.values() for g in gs]
        wall = sampler.caught_up_at(all_groups, published_at)
        assert wall is not None
        counters = system.counters()
        per_service: dict[str, Any] = {}
        for name, service_groups in groups.items():
            done = sampler.caught_up_at(service_groups, published_at) or wall
            if name == "pos-gateway":
                records = len(sales)  # its live-stats group reads every sale (its counters are Redis, not these)
            else:
                records = int(sum(records_seen(counters.get(g, {})) - records_seen(counters_before.get(g, {}))
                                  for g in service_groups))
            per_service[name] = {"consumes": bool(service_groups), "caught_up_s": done, "records": records,
                                 "records_per_s": records / done,
                                 "cpu_seconds": cpu_used[name],
                                 "pss_before_mb": memory_before[name] / 1e6, "pss_peak_mb": sampler.memory_peak[name] / 1e6}
            if name in OWN_PROCESS_ALSO:
                alone = own_process(name)
                per_service[name]["own_process_pss_peak_mb"] = sampler.memory_peak[alone] / 1e6
        results["replay"] = {"publish_seconds": outcome.seconds, "published": outcome.accepted,
                             "wall_seconds_to_lag_zero": wall, "per_service": per_service,
                             "infrastructure_pss_mb": {n: {"before": memory_before[n] / 1e6, "peak": sampler.memory_peak[n] / 1e6,
                                                           "cpu_seconds": cpu_used[n]}
                                                       for n in ("broker (tansu)", "postgresql", "redis")},
                             "postgresql_cpu_seconds_by_service": postgres_by_service,
                             "postgresql_sessions_opened": sessions_opened,
                             "bench_process_cpu_seconds": bench_cpu,
                             "memory_sample_ms": 1000 * statistics.mean(sampler.memory_read_seconds or [0.0]),
                             "consumer_counters": counters, "lag_samples": len(sampler.lag_series),
                             "group_caught_up_s": {g: sampler.caught_up_at([g], published_at) for g in all_groups},
                             "load_average_after": os.getloadavg()}
        print(f"  every group at lag 0 after {wall:.1f} s (file published in {outcome.seconds:.1f} s)", flush=True)

        print("[4/6] exactness: every member, read before the steady traffic adds sales", flush=True)
        members = fetch_members(system.url("member-profile"))

        print(f"[5/6] steady traffic after the year: {args.steady_rate:,.0f} sales/s for {args.steady_seconds:.0f} s",
              flush=True)
        year_end = max(sale.occurred_at for sale in sales)
        results["deliveries_before_steady"] = asyncio.run(deliver_open_orders(
            system.url("replenishment"), year_end + timedelta(minutes=1)))
        print(f"  suppliers deliver every open order: {results['deliveries_before_steady']['orders']:,} orders "
              f"({results['deliveries_before_steady']['lines']:,} lines) received", flush=True)
        results["rules_records_before_steady"] = asyncio.run(wait_for_rules(stack.kafka.bootstrap, system.prefix, 60))
        settle = Sampler(pids, lags).start()
        settle.wait_until_all_zero(0.0, timeout=args.timeout, settle=2.0)  # the rules reached the notifier
        settle.stop()
        decisions_before = campaign_decisions(system.url("notifier"))
        window_before = baskets_in_window(system.url("segmenter"))
        steady_sampler = Sampler(pids, lags)
        memory_start = steady_sampler.memory_now()
        postgres_start = tree_size(pids["postgresql"]), tree_memory(pids["postgresql"], "uss")
        database_start = asyncio.run(database_bytes(stack.postgres.url))
        steady_sampler.start()
        sent, steady_lines, took = asyncio.run(produce_steady(stack.kafka.bootstrap, system.prefix, following_weeks(sales),
                                                args.steady_rate, args.steady_seconds))
        steady_sampler.wait_until_all_zero(took, timeout=args.timeout, settle=2.0)
        steady_sampler.stop()
        memory_end = steady_sampler.memory_now()
        postgres_end = tree_size(pids["postgresql"]), tree_memory(pids["postgresql"], "uss")
        database_end = asyncio.run(database_bytes(stack.postgres.url))
        decisions = decisions_between(decisions_before, campaign_decisions(system.url("notifier")))
        window_after = baskets_in_window(system.url("segmenter"))
        results["steady"] = {
            "sales": sent, "seconds": took, "rate_per_s": sent / took,
            "lines": steady_lines, "decisions": decisions, "baskets_in_window": [window_before, window_after],
            "postgresql_processes": [postgres_start[0], postgres_end[0]],
            "postgresql_private_mb": [postgres_start[1] / 1e6, postgres_end[1] / 1e6],
            "database_bytes_before": database_start, "database_bytes_after": database_end,
            "pss_mb": {name: {"start": memory_start[name] / 1e6, "end": memory_end[name] / 1e6,
                              "peak": steady_sampler.memory_peak[name] / 1e6,
                              "bytes_per_sale": (memory_end[name] - memory_start[name]) / sent,
                              "quarters": [memory_at(steady_sampler, took * q / 4)[name] / 1e6 for q in (1, 2, 3, 4)]}
                       for name in memory_start}}
        print(f"  {sent:,} sales in {took:.1f} s; every group back at lag 0", flush=True)

        print("[6/6] sale -> offer latency", flush=True)
        results["offers"] = asyncio.run(offer_latencies(stack.kafka.bootstrap, system.prefix, len(sales) + sent))
    finally:
        if lags is not None:
            lags.close()
        if system is not None:
            system.stop()
        stack.discard()  # and its data (CRM_KEEP_STACK_STATE=1 keeps it)

    anchor = anchor_from_csv(args.dataset)
    exact = compare(anchor.figures, served_figures(members))
    results["exactness"] = {k: v for k, v in exact.items() if k != "mismatches"} | {"mismatches": exact["mismatches"][:20]}
    report = render(results)
    print("\n".join(report))
    results["report"] = report
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(f"results written to {args.json}; logs in {work}")
    return 0


def render(results: dict[str, Any]) -> list[str]:
    ceiling, replay, offers, exact = results["ceiling"], results["replay"], results["offers"], results["exactness"]
    events = results["events"]
    rows: list[tuple[str, str, str, str]] = []
    wall = replay["wall_seconds_to_lag_zero"]
    rows.append(("whole file to lag 0 (all groups)", f"{wall:.1f} s ({events / wall:,.0f} sales/s)",
                 f"raw produce {ceiling['produce_seconds']:.1f} s + raw consume {ceiling['consume_seconds']:.1f} s",
                 f"< {TARGET_SECONDS:.0f} s: {'PASS' if wall < TARGET_SECONDS else f'FAIL by {wall - TARGET_SECONDS:.0f} s'}"))
    rows.append(("replay publish (encode + send + acks)", f"{events / replay['publish_seconds']:,.0f} events/s",
                 f"raw produce {ceiling['produce_events_per_s']:,.0f} events/s ({ceiling['produce_mb_per_s']:.1f} MB/s)", ""))
    for name, figures in replay["per_service"].items():
        if not figures.get("consumes", True):
            continue
        rows.append((f"{name}: records / time to its lag 0",
                     f"{figures['records']:,} in {figures['caught_up_s']:.1f} s = {figures['records_per_s']:,.0f}/s"
                     f" ({figures['cpu_seconds']:.0f} CPU s)",
                     f"raw consume {ceiling['consume_events_per_s']:,.0f} events/s", ""))
    for name, figures in replay["per_service"].items():
        alone = (f" (its own process alone: peak {figures['own_process_pss_peak_mb']:.0f} MB)"
                 if "own_process_pss_peak_mb" in figures else "")
        rows.append((f"{name}: PSS before -> peak", f"{figures['pss_before_mb']:.0f} -> {figures['pss_peak_mb']:.0f} MB"
                     + alone, "", ""))
    for name, figures in replay["infrastructure_pss_mb"].items():
        rows.append((f"{name}: PSS before -> peak", f"{figures['before']:.0f} -> {figures['peak']:.0f} MB "
                     f"({figures['cpu_seconds']:.0f} CPU s)", "", ""))
    by_service = replay.get("postgresql_cpu_seconds_by_service", {})
    if by_service:
        rows.append(("postgresql: CPU s on each service's connections",
                     ", ".join(f"{name} {seconds:.1f}" for name, seconds in sorted(by_service.items(), key=lambda kv: -kv[1])),
                     "pg_stat_activity pid -> /proc CPU", ""))
    if "bench_process_cpu_seconds" in replay:
        total = sum(f["cpu_seconds"] for f in replay["per_service"].values()) + sum(
            f["cpu_seconds"] for f in replay["infrastructure_pss_mb"].values())
        cores = results.get("cores") or 1
        rows.append(("CPU spent until lag 0: services + infrastructure; this bench",
                     f"{total:.0f} CPU s (/ {cores} cores = {total / cores:.0f} s at best); "
                     f"{replay['bench_process_cpu_seconds']:.0f} CPU s",
                     "this bench: replay publisher, lag and memory samplers (a memory reading "
                     f"{replay['memory_sample_ms']:.0f} ms on average, every {SAMPLE_RSS_SECONDS} s)", ""))
    if "postgresql_sessions_opened" in replay:
        rows.append(("postgresql: connections opened during the replay", f"{replay['postgresql_sessions_opened']:,}",
                     "pg_stat_database.sessions (the bench's own readings included)", ""))
    steady = results["steady"]
    rows.append(("steady traffic after the year", f"{steady['sales']:,} sales ({steady['lines']:,} lines) in "
                 f"{steady['seconds']:.1f} s = {steady['rate_per_s']:,.0f} sales/s", "", ""))
    for phase, label in (("steady", "steady"), ("bulk", "bulk replay (backlog)")):
        figures = offers[phase]
        if figures["from_sales"]:
            rows.append((f"sale -> offer latency p50 / p99, {label}",
                         f"{figures['p50_ms']:,.0f} / {figures['p99_ms']:,.0f} ms ({figures['from_sales']:,} offers"
                         f" from sales, max {figures['max_ms']:,.0f} ms)",
                         "bench/offer_latency.py: p99 < 250 ms at 1,000 two-line sales/s" if phase == "steady" else "",
                         ""))
        else:
            rows.append((f"sale -> offer latency, {label}", "no offer triggered by a sale", "", ""))
    for campaign, made in steady["decisions"].items():
        if made["sent"] or made["withheld"] or made["suppressed"]:
            rows.append((f"steady: {campaign}", f"{made['sent']:,} sent, {made['withheld']:,} withheld, suppressed: "
                         + (", ".join(f"{k} {v:,}" for k, v in sorted(made["suppressed"].items())) or "none"), "", ""))
    database_growth = steady["database_bytes_after"] - steady["database_bytes_before"]
    rows.append(("database growth over the steady traffic", f"{database_growth / 1e6:,.1f} MB = "
                 f"{database_growth / steady['sales']:,.0f} bytes/sale", "the state tables (where state belongs)", ""))
    window = steady["baskets_in_window"]
    for name, figures in steady["pss_mb"].items():
        anchor = f"database: {database_growth / steady['sales']:,.0f} bytes/sale"
        if name.startswith("segmenter"):
            anchor += f"; its basket window (in memory) {window[0]:,} -> {window[1]:,} baskets"
        if name == "postgresql" and "postgresql_processes" in steady:
            anchor += (f"; {steady['postgresql_processes'][0]} -> {steady['postgresql_processes'][1]} processes"
                       " (a backend per connection)")
            if "postgresql_private_mb" in steady:
                private = steady["postgresql_private_mb"]
                anchor += f", their private memory (USS) {private[0]:.0f} -> {private[1]:.0f} MB"
        quarters = " / ".join(f"{mb:.0f}" for mb in figures["quarters"])
        rows.append((f"{name}: PSS over the steady traffic", f"{figures['start']:.0f} -> {figures['end']:.0f} MB "
                     f"(each quarter {quarters}; peak {figures['peak']:.0f}) = {figures['bytes_per_sale']:,.0f} bytes/sale",
                     anchor,
                     "no growth per event beyond state"))
    rows.append(("offers by trigger", ", ".join(f"{k} {v:,}" for k, v in sorted(offers["by_trigger"].items())) or "none",
                 "", ""))
    rows.append(("members matching pandas (freq, monetary, last)", f"{exact['matching']:,} / {exact['anchor_members']:,}",
                 "bench/profile_exactness.py anchor", "all: " + ("PASS" if exact["mismatched_members"] == 0 else "FAIL")))
    widths = [max(len(r[i]) for r in [*rows, ("figure", "value", "anchor (same run)", "target")]) for i in range(4)]
    out = ["", "=" * 100, f"whole system, whole year: {results['when']} ({results['cores']} cores, load "
           f"{results['load_average_before'][0]:.2f} before, {replay['load_average_after'][0]:.2f} after)", "=" * 100]
    for row in [("figure", "value", "anchor (same run)", "target"), *rows]:
        out.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    out.append("=" * 100)
    return out


if __name__ == "__main__":
    sys.exit(main())
