"""The full Online Retail file through Kafka directly (the `--via kafka` bulk path), on the embedded broker.

    .venv/bin/python bench/replay.py [--dataset PATH] [--no-profile]

1. load: `load_sales()` of the whole file (parse + contract validation), timed on its own;
2. raw produce ceiling: the same events, pre-encoded, produced with the same producer settings;
3. publish: every sale as its `sale_recorded` envelope, encoded with `crm_shared.serde.encode` as it
   is sent, to `pos.sales.v1` (linger 20 ms, 1 MB batches, acks=all, no idempotence);
4. the same publish with a faster encoder (bench-only, to show what is available), to another topic;
5. reads `pos.sales.v1` back: every sale there, once;
6. cProfile of the encode path, so the time per event is accounted for.

It exits 0 with a report (targets marked PASS/FAIL), 2 when the dataset is absent. Results also go
to `bench/results/replay.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATASET = REPO.parent / "shared" / "datasets" / "online_retail.csv.gz"
RESULTS = HERE / "results" / "replay.json"
SOURCE = "crm-replay"
DOCUMENTED_SALES, DOCUMENTED_LINES = 24_563, 540_571
TARGET_LINES_PER_S = 20_000.0
BATCH_BYTES = 1024 * 1024

Encoder = Callable[[Any], tuple[bytes, bytes]]


def serde_encoder(sale: Any) -> tuple[bytes, bytes]:
    """What the real `crm replay --via kafka` does: the shared serde, nothing else."""
    from crm_shared.events import sale_recorded
    from crm_shared.serde import encode, encode_key

    event = sale_recorded(sale, source=SOURCE)
    return encode_key(event.key), encode(event)


def fast_encoder() -> Encoder:
    """Byte-identical to `serde_encoder`, without the per-line work (bench-only, to size the gain).

    Most of `encode()`'s time is pydantic building the dict tree (`to_python`) and one Python call of
    `format_money` per money field (2 per line). A loaded file repeats lines: `load_sales` shares one
    frozen `SaleLine` per distinct (sku, description, quantity, price), ~69k for 540k lines, so each
    line's JSON is written once and spliced in. The envelope is made with `model_construct` (the sale
    is already a validated contract object) and written by pydantic-core without the lines.
    """
    from crm_shared.events import SALE_EVENT_TYPES, SALE_SCHEMA_VERSION, Envelope, Sale, SaleLine

    envelope_type = Envelope[Sale]
    envelope_json = envelope_type.__pydantic_serializer__.to_json
    sale_json = Sale.__pydantic_serializer__.to_json
    line_json = SaleLine.__pydantic_serializer__.to_json
    lines_cache: dict[int, tuple[SaleLine, bytes]] = {}  # keeps the line alive so its id stays unique

    def encoded_line(line: SaleLine) -> bytes:
        hit = lines_cache.get(id(line))
        if hit is None or hit[0] is not line:
            hit = lines_cache[id(line)] = (line, line_json(line))
        return hit[1]

    def encode(sale: Any) -> tuple[bytes, bytes]:
        event = envelope_type.model_construct(
            event_id=sale.event_id, event_type=SALE_EVENT_TYPES[sale.kind], schema_version=SALE_SCHEMA_VERSION,
            occurred_at=sale.occurred_at, source=SOURCE, key=sale.partition_key, payload=sale)
        # `lines` is the last field of Sale and `payload` the last of the envelope: splice them in at the end.
        head = envelope_json(event, exclude={"payload"})[:-1]
        body = sale_json(sale, exclude={"lines"})[:-1]
        lines = b",".join([encoded_line(line) for line in sale.lines])
        return event.key.encode("utf-8"), b"".join((head, b',"payload":', body, b',"lines":[', lines, b"]}}"))

    return encode


def dump_json_encoder(sale: Any) -> tuple[bytes, bytes]:
    """`event.model_dump_json()`: pydantic-core writes JSON directly, no Python dict tree, no caching."""
    from crm_shared.events import sale_recorded

    event = sale_recorded(sale, source=SOURCE)
    return event.key.encode("utf-8"), event.model_dump_json().encode()


async def produce(bootstrap: str, topic: str, sales: Sequence[Any], encoder: Encoder | None,
                  payloads: Sequence[tuple[bytes, bytes]] | None, label: str) -> dict[str, Any]:
    """Send every event, then wait for every acknowledgement; the clock covers encode + send + acks."""
    from crm_shared.kafka import make_producer

    producer = make_producer(bootstrap, client_id=f"bench-replay-{label}", linger_ms=20, max_batch_size=BATCH_BYTES,
                             max_request_size=BATCH_BYTES * 4)
    await producer.start()
    failed: list[BaseException] = []
    acked = 0

    def count(future: asyncio.Future[Any]) -> None:
        nonlocal acked
        if future.cancelled():
            failed.append(asyncio.CancelledError())
        elif future.exception() is not None:
            failed.append(future.exception())  # type: ignore[arg-type]
        else:
            acked += 1

    total = len(payloads) if payloads is not None else len(sales)
    sent_bytes = 0
    encode_seconds = 0.0
    try:
        start = time.perf_counter()
        next_report = start + 2
        for index in range(total):
            if payloads is not None:
                key, value = payloads[index]
            else:
                assert encoder is not None
                began = time.perf_counter()
                key, value = encoder(sales[index])
                encode_seconds += time.perf_counter() - began
            sent_bytes += len(value)
            future = await producer.send(topic, value=value, key=key)
            future.add_done_callback(count)
            if index % 1000 == 0 and time.perf_counter() >= next_report:
                next_report += 2
                print(f"    [{label}] {time.perf_counter() - start:5.1f}s: {index:,}/{total:,} sent, {acked:,} acked",
                      file=sys.stderr, flush=True)
        await producer.flush()
        elapsed = time.perf_counter() - start
    finally:
        await producer.stop()
    if failed:
        print(f"    [{label}] {len(failed):,} sends FAILED, first: {failed[0]!r}", file=sys.stderr)
    return {"topic": topic, "events": total, "acked": acked, "failed": len(failed), "seconds": elapsed,
            "bytes": sent_bytes, "encode_seconds": encode_seconds}


async def topic_census(bootstrap: str, topic: str, expected: int) -> dict[str, Any]:
    """Every record read back (until `expected` are in and 2 s more pass, or 10 s pass with nothing new)
    and its event ids counted; the broker's end offsets are reported beside it."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                                max_partition_fetch_bytes=8 * BATCH_BYTES, fetch_max_bytes=32 * BATCH_BYTES)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ids: Counter[str] = Counter()
        per_partition: Counter[int] = Counter()
        last_offset: dict[int, int] = {}
        read = 0
        last_news = time.monotonic()
        settle_until: float | None = None
        while time.monotonic() - last_news < 10:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for tp, records in batch.items():
                for record in records:
                    ids[orjson.loads(record.value)["event_id"]] += 1
                    per_partition[tp.partition] += 1
                    last_offset[tp.partition] = record.offset
                    read += 1
                last_news = time.monotonic()
            if read >= expected:
                settle_until = settle_until or time.monotonic() + 2
                if time.monotonic() >= settle_until:
                    break
        return {"topic": topic, "held_by_offsets": sum(ends[tp] - starts[tp] for tp in tps), "records_read": read,
                "distinct_event_ids": len(ids), "duplicates": sum(n - 1 for n in ids.values() if n > 1),
                "expected": expected, "complete": len(ids) == expected and read == expected,
                "per_partition": {str(tp.partition): {"read": per_partition[tp.partition], "start": starts[tp],
                                                 "end": ends[tp], "last_offset_read": last_offset.get(tp.partition)}
                                  for tp in tps}}
    finally:
        await consumer.stop()


def profile_encode(sales: Sequence[Any], encoder: Encoder, top: int = 14) -> list[str]:
    profiler = cProfile.Profile()
    profiler.enable()
    for sale in sales:
        encoder(sale)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    keep = [line for line in out.getvalue().splitlines() if line.strip()]
    start = next((i for i, line in enumerate(keep) if "ncalls" in line), 0)
    return keep[start:start + top + 1]


def timed_encode(sales: Sequence[Any], encoder: Encoder) -> tuple[float, list[tuple[bytes, bytes]]]:
    started = time.perf_counter()
    out = [encoder(sale) for sale in sales]
    return time.perf_counter() - started, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DATASET, help=f"the Online Retail CSV (default {DATASET})")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each publish variant; the median is reported")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile of the encode path")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"where the results go (default {RESULTS})")
    args = parser.parse_args(argv)
    if not args.dataset.exists():
        print(f"replay bench: dataset {args.dataset} is absent. It lives in the team's ../shared/datasets folder "
              "(online_retail.csv.gz); pass --dataset PATH to use another copy.", file=sys.stderr)
        return 2

    import uvloop
    from crm_shared.datasets.online_retail import load_sales
    from crm_shared.embedded import EmbeddedStack
    from crm_shared.kafka import ensure_topics
    from crm_shared.topics import POS_SALES

    results: dict[str, Any] = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "cores": os.cpu_count(),
                               "dataset": str(args.dataset)}
    print(f"[1/6] load_sales({args.dataset.name}) ...", flush=True)
    started = time.perf_counter()
    sales, summary = load_sales(args.dataset)
    load_seconds = time.perf_counter() - started
    lines = sum(len(sale.lines) for sale in sales)
    results["load"] = {"seconds": load_seconds, "rows": summary.rows_read, "sales": summary.sales,
                       "returns": summary.returns, "events": len(sales), "lines": lines}
    print(f"  {summary.rows_read:,} rows -> {len(sales):,} sales/returns ({summary.sales:,} + {summary.returns:,}), "
          f"{lines:,} lines in {load_seconds:.2f}s", flush=True)

    print("[2/6] encode only (no broker): serde.encode vs a faster path", flush=True)
    serde_seconds, serde_payloads = timed_encode(sales, serde_encoder)
    dump_json_seconds, dump_json_payloads = timed_encode(sales, dump_json_encoder)
    dump_json_identical = dump_json_payloads == serde_payloads
    del dump_json_payloads
    fast_seconds, fast_payloads = timed_encode(sales, fast_encoder())
    identical = fast_payloads == serde_payloads
    del fast_payloads
    results["encode_only"] = {"serde_seconds": serde_seconds, "fast_seconds": fast_seconds, "fast_identical": identical,
                              "dump_json_seconds": dump_json_seconds, "dump_json_identical": dump_json_identical,
                              "bytes": sum(len(v) for _, v in serde_payloads)}
    results["raw"], results["publish"], results["publish_fast"] = [], [], []

    work = Path(tempfile.mkdtemp(prefix="crm-bench-replay-"))
    stack = EmbeddedStack.create(work / "stack")  # the broker is the only part this bench needs
    print(f"  starting the embedded broker in {work} ...", flush=True)
    stack.state_dir.mkdir(parents=True, exist_ok=True)
    stack.kafka.start()
    try:
        bootstrap = stack.kafka.bootstrap

        async def run() -> None:
            # Runs of about a second on 2 shared cores are noisy: each is repeated, the median reported.
            for rep in range(1, args.repeat + 1):
                raw_topic = POS_SALES.qualified(f"bench.raw{rep}.")
                serde_topic = POS_SALES.qualified("" if rep == 1 else f"bench.serde{rep}.")
                fast_topic = POS_SALES.qualified(f"bench.fast{rep}.")
                for topic in (raw_topic, serde_topic, fast_topic):
                    await ensure_topics(bootstrap, prefix=topic.removesuffix(POS_SALES.name), topics=[POS_SALES])
                print(f"[3/6] run {rep}/{args.repeat}: raw produce ceiling (pre-encoded payloads, same bytes)", flush=True)
                results["raw"].append(await produce(bootstrap, raw_topic, sales, None, serde_payloads, "raw"))
                print(f"[4/6] run {rep}/{args.repeat}: publish, sale_recorded + serde.encode per sale -> {serde_topic}",
                      flush=True)
                results["publish"].append(await produce(bootstrap, serde_topic, sales, serde_encoder, None, "serde"))
                print(f"[5/6] run {rep}/{args.repeat}: publish with the cached-line encoder (bench-only) -> {fast_topic}",
                      flush=True)
                results["publish_fast"].append(await produce(bootstrap, fast_topic, sales, fast_encoder(), None, "fast"))
            print("  reading pos.sales.v1 back ...", flush=True)
            results["census"] = await topic_census(bootstrap, POS_SALES.qualified(""), len(sales))

        uvloop.run(run())
    finally:
        stack.discard()  # and its data (CRM_KEEP_STACK_STATE=1 keeps it)

    if not args.no_profile:
        print("[6/6] cProfile of the serde encode path (all events)", flush=True)
        results["profile_serde"] = profile_encode(sales, serde_encoder)

    report = summarise(results)
    print("\n".join(report), flush=True)
    results["report"] = report
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(f"results written to {args.json}")
    return 0


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(runs, key=lambda run: run["seconds"])
    chosen = dict(ordered[len(ordered) // 2])
    chosen["all_seconds"] = [round(run["seconds"], 3) for run in runs]
    chosen["acked"] = min(run["acked"] for run in runs)
    chosen["failed"] = sum(run["failed"] for run in runs)
    return chosen


def summarise(results: dict[str, Any]) -> list[str]:
    load, enc, census = results["load"], results["encode_only"], results["census"]
    raw, pub, fast = (median_run(results[k]) for k in ("raw", "publish", "publish_fast"))
    events, lines = load["events"], load["lines"]
    out = ["", "=" * 100, f"replay bench (--via kafka path): {results['when']}  ({results['cores']} cores)", "=" * 100]
    out.append(f"load/parse  load_sales(): {load['rows']:,} rows -> {events:,} events, {lines:,} lines in "
               f"{load['seconds']:.2f}s ({lines / load['seconds']:,.0f} lines/s)")
    if events != DOCUMENTED_SALES or lines != DOCUMENTED_LINES:
        out.append(f"  NOTE: the brief documents {DOCUMENTED_SALES:,} sales/returns and {DOCUMENTED_LINES:,} lines; "
                   f"load_sales gives {events:,} ({load['sales']:,} sales + {load['returns']:,} returns) and {lines:,}")
    out.append(f"encode only (sale_recorded + encode, no broker), {enc['bytes'] / 1e6:,.1f} MB:")
    out.append(f"  serde.encode (model_dump + orjson) {enc['serde_seconds']:5.2f}s  "
               f"{events / enc['serde_seconds']:>8,.0f} events/s {lines / enc['serde_seconds']:>10,.0f} lines/s")
    out.append(f"  event.model_dump_json()            {enc['dump_json_seconds']:5.2f}s  "
               f"{events / enc['dump_json_seconds']:>8,.0f} events/s {lines / enc['dump_json_seconds']:>10,.0f} lines/s"
               f"  ({enc['serde_seconds'] / enc['dump_json_seconds']:.2f}x, byte-identical: {enc['dump_json_identical']})")
    out.append(f"  cached line JSON + model_construct {enc['fast_seconds']:5.2f}s  "
               f"{events / enc['fast_seconds']:>8,.0f} events/s {lines / enc['fast_seconds']:>10,.0f} lines/s"
               f"  ({enc['serde_seconds'] / enc['fast_seconds']:.2f}x, byte-identical: {enc['fast_identical']})")
    out.append("")

    out.append(f"publish phase (encode + send + all acks), median of {len(results['raw'])} runs each:")

    def row(name: str, run: dict[str, Any]) -> str:
        seconds = run["seconds"]
        encode = f", of which encode {run['encode_seconds']:.2f}s" if run["encode_seconds"] else ""
        return (f"{name:<38} {lines / seconds:>9,.0f} lines/s {events / seconds:>8,.0f} sales/s "
                f"{run['bytes'] / seconds / 1e6:6.1f} MB/s  {seconds:5.2f}s{encode}; runs {run['all_seconds']} s; "
                f"failed {run['failed']:,}")

    out.append(row("raw produce ceiling (pre-encoded)", raw))
    out.append(row("publish, serde.encode (the real path)", pub))
    out.append(row("publish, cached-line encode (bench)", fast))
    out.append("")
    out.append(f"pos.sales.v1 read back: {census['records_read']:,} records read (end-start offsets say "
               f"{census['held_by_offsets']:,}), "
               f"{census['distinct_event_ids']:,} distinct event ids, {census['duplicates']:,} duplicates, "
               f"expected {census['expected']:,} -> {'ALL THERE, ONCE' if census['complete'] else 'INCOMPLETE'}")
    rate = lines / pub["seconds"]
    out.append(f"target publish >= {TARGET_LINES_PER_S:,.0f} lines/s: {rate:,.0f} lines/s "
               f"({rate / (lines / raw['seconds']):.0%} of the raw ceiling)  {'PASS' if rate >= TARGET_LINES_PER_S else 'FAIL'}")
    out.append(f"target all {events:,} events on pos.sales.v1 exactly once: {'PASS' if census['complete'] else 'FAIL'}")
    if "profile_serde" in results:
        out.append("")
        out.append("cProfile, serde encode of every event (sorted by own time):")
        out.extend("  " + line for line in results["profile_serde"])
    out.append("=" * 100)
    return out


if __name__ == "__main__":
    sys.exit(main())
