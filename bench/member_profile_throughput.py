"""member-profile consumer throughput and profile-read latency on the embedded stack.

    .venv/bin/python bench/member_profile_throughput.py [--batch N] [--rate 1000] [--seconds 20]
                                                        [--py-spy PATH] [--skip-exactness]

The issue's targets:
- consumer throughput >= 10,000 sale lines/s on the embedded stack, printed beside the raw aiokafka
  consume rate measured in the same run;
- `GET /v1/members/{id}/profile` p99 < 10 ms at ~1,000 requests/s.

One run:
1. publishes the whole Online Retail file (24,562 events, 540,571 lines) to a fresh
   `<prefix>pos.sales.v1` first, THEN starts `python -m member_profile` (the service's default
   consumer batch unless --batch) and times it until every event is applied (`/metrics`, polled
   every 0.1 s) and the group's lag is 0. Three windows are printed: from process start (imports,
   migrations, group join included), from /healthz, and from the first applied batch seen;
2. the profile-read latency: an open-loop load generator in its own process sends GETs at a fixed
   rate over keep-alive HTTP/1.1 connections, rotating over every real member id; latency is taken
   from the request's scheduled send time (no coordinated omission) and, beside it, from its actual
   send time;
3. the raw aiokafka consume rate of the same topic: a plain consumer group with the service's
   consumer settings, committing after each `getmany`, no processing; then the same with the
   service's decoder (`decoder_for(SaleRecorded)`), to size the decode cost;
4. the exactness of this run's profiles against the pandas anchor (`bench/profile_exactness.py`);
5. with --py-spy: a second consumer run on a fresh prefix under `py-spy record`, and where the
   service's time goes (self and inclusive sample shares).

The machine is shared and has 2 cores: the service, PostgreSQL, Redis, the broker and the load
generator compete for them, so the figures are noisy. It always exits 0 (a report), 2 when the
dataset is absent. Results also go to `bench/results/member_profile_throughput.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from profile_exactness import (  # noqa: E402  (bench scripts import each other by file)
    DATASET,
    OPS,
    Published,
    anchor_from_csv,
    compare,
    consumer_counters,
    fetch_members,
    group_of,
    publish_file,
    require_dataset,
    served_figures,
    start_member_profile,
    start_stack,
    wait_for_lag_zero,
)

RESULTS = HERE / "results" / "member_profile_throughput.json"
TARGET_LINES_PER_S = 10_000.0
TARGET_P99_MS = 10.0


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# ---------------------------------------------------------------------------------------------
# 1. The service consuming a pre-published topic


def time_consumer(stack: Any, work: Path, published: Published, *, batch: int | None, timeout: float,
                  on_started: Any = None) -> tuple[Any, dict[str, Any]]:
    """Start member-profile on a topic that already holds the whole file; time it to lag 0.

    Returns the still-running service (the caller stops it) and the timings."""
    group = group_of(published.prefix)
    started = time.perf_counter()
    service = start_member_profile(stack, work, published.prefix, batch=batch)
    healthy = time.perf_counter()
    if on_started is not None:
        on_started(service)
    samples: list[tuple[float, float]] = []
    first_applied: float | None = None
    deadline = healthy + timeout
    while True:
        now = time.perf_counter()
        counters = consumer_counters(service.url, group)
        seen = counters.get("applied", 0.0) + counters.get("duplicate", 0.0)
        samples.append((now - started, seen))
        if seen > 0 and first_applied is None:
            first_applied, applied_at_first = now, seen
        if seen >= published.events:
            break
        if now > deadline:
            raise TimeoutError(f"member-profile applied {seen:,.0f} of {published.events:,} in {timeout:.0f}s")
        time.sleep(0.1)
    all_applied = time.perf_counter()
    lag_confirmed_after = wait_for_lag_zero(stack.kafka.bootstrap, group, published.topic, 60)
    assert first_applied is not None
    lines_per_event = published.lines / published.events
    steady_events = published.events - applied_at_first
    windows = {
        "from_process_start": (all_applied - started, published.events),
        "from_healthz": (all_applied - healthy, published.events),
        "from_first_applied": (all_applied - first_applied, steady_events),
    }
    figures: dict[str, Any] = {"lines": published.lines, "events": published.events,
                               "healthz_after_s": healthy - started, "first_applied_after_s": first_applied - started,
                               "applied_at_first_sample": applied_at_first,
                               "all_applied_after_s": all_applied - started,
                               "lag_zero_confirmed_after_s": all_applied - started + lag_confirmed_after,
                               "counters": consumer_counters(service.url, group), "samples": samples, "windows": {}}
    for name, (seconds, events) in windows.items():
        # The first window's events are whole sales; the steady one scales by the mean lines per event.
        lines = published.lines if events == published.events else events * lines_per_event
        figures["windows"][name] = {"seconds": seconds, "events": events, "events_per_s": events / seconds,
                                    "lines_per_s": lines / seconds}
    return service, figures


# ---------------------------------------------------------------------------------------------
# 3. Raw aiokafka consume of the same topic


async def raw_consume(bootstrap: str, topic: str, events: int, lines: int, *, batch: int, decode: bool) -> dict[str, Any]:
    from crm_shared.kafka import make_consumer

    decoder = None
    if decode:
        from crm_shared.consumer import decoder_for
        from crm_shared.events import SaleRecorded

        decoder = decoder_for(SaleRecorded)
    group = f"bench-raw-{uuid.uuid4().hex[:8]}"
    consumer = make_consumer(bootstrap, topic, group_id=group, client_id=group, max_poll_records=batch)
    started = time.perf_counter()
    await consumer.start()
    first: float | None = None
    seen = 0
    decode_seconds = 0.0
    try:
        while seen < events:
            batches = await consumer.getmany(timeout_ms=500, max_records=batch)
            records = [r for part in batches.values() for r in part]
            if not records:
                if time.perf_counter() - started > 300:
                    raise TimeoutError(f"raw consume read {seen:,} of {events:,} records")
                continue
            if first is None:
                first = time.perf_counter()
            if decoder is not None:
                at = time.perf_counter()
                for record in records:
                    decoder(record.value)
                decode_seconds += time.perf_counter() - at
            seen += len(records)
            await consumer.commit()
        done = time.perf_counter()
    finally:
        await consumer.stop()
    assert first is not None
    return {"decode": decode, "batch": batch, "records": seen, "from_start_s": done - started,
            "from_first_record_s": done - first, "events_per_s": seen / (done - started),
            "lines_per_s": lines / (done - started), "steady_events_per_s": seen / (done - first),
            "steady_lines_per_s": lines * seen / events / (done - first), "decode_seconds": decode_seconds}


# ---------------------------------------------------------------------------------------------
# 2. Open-loop profile-read load (runs in its own process: `... _loadgen CONFIG.json RESULT.json`)


async def _loadgen(config: dict[str, Any]) -> dict[str, Any]:
    from gateway import _read_response, percentile  # the gateway bench's lean HTTP/1.1 response reader

    host, port, rate = config["host"], config["port"], config["rate"]
    seconds, warmup, connections = config["seconds"], config["warmup"], config["connections"]
    requests = [(f"GET /v1/members/{member}/profile HTTP/1.1\r\nHost: {host}:{port}\r\n"
                 f"x-api-key: {OPS['x-api-key']}\r\n\r\n").encode() for member in config["member_ids"]]
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait(await asyncio.open_connection(host, port))
    clock = time.perf_counter
    start = clock() + 0.05
    measure_from = start + warmup
    total = int(rate * (warmup + seconds))
    from_schedule: list[float] = []
    from_send: list[float] = []
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    in_flight_peak = 0
    in_flight = 0

    async def one(request: bytes, scheduled: float) -> None:
        nonlocal in_flight, in_flight_peak
        reader, writer = await idle.get()
        in_flight += 1
        in_flight_peak = max(in_flight_peak, in_flight)
        sent = clock()
        try:
            writer.write(request)
            status = await _read_response(reader)
        except (OSError, asyncio.IncompleteReadError, RuntimeError, ValueError) as exc:
            errors[type(exc).__name__] += 1
            writer.close()
            idle.put_nowait(await asyncio.open_connection(host, port))
            return
        finally:
            in_flight -= 1
        answered = clock()
        idle.put_nowait((reader, writer))
        if scheduled >= measure_from:
            statuses[status] += 1
            from_schedule.append(answered - scheduled)
            from_send.append(answered - sent)

    tasks = set()
    for index in range(total):
        scheduled = start + index / rate
        delay = scheduled - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(requests[index % len(requests)], scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    finished = clock()
    while not idle.empty():
        idle.get_nowait()[1].close()

    def summary(latencies: list[float]) -> dict[str, float]:
        ordered = sorted(latencies)
        return {"p50": percentile(ordered, 0.50) * 1000, "p90": percentile(ordered, 0.90) * 1000,
                "p99": percentile(ordered, 0.99) * 1000, "p999": percentile(ordered, 0.999) * 1000,
                "max": (ordered[-1] if ordered else float("nan")) * 1000}

    measured = len(from_schedule)
    return {"rate_asked": rate, "seconds": seconds, "warmup": warmup, "connections": connections,
            "requests_measured": measured, "achieved_per_s": measured / max(1e-9, finished - measure_from),
            "statuses": {str(k): v for k, v in sorted(statuses.items())}, "client_errors": dict(errors),
            "in_flight_peak": in_flight_peak, "latency_ms_from_schedule": summary(from_schedule),
            "latency_ms_from_send": summary(from_send)}


def loadgen_main(config_path: str, result_path: str) -> None:
    import uvloop

    config = json.loads(Path(config_path).read_text())
    Path(result_path).write_bytes(orjson.dumps(uvloop.run(_loadgen(config))))


def run_read_load(port: int, member_ids: list[str], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    ids = list(member_ids)
    random.Random(5).shuffle(ids)
    config = {"host": "127.0.0.1", "port": port, "rate": args.rate, "seconds": args.seconds, "warmup": args.warmup,
              "connections": args.connections, "member_ids": ids}
    config_path, result_path = work / "read-load.json", work / "read-load.result.json"
    config_path.write_text(json.dumps(config))
    print(f"  open-loop GET /v1/members/{{id}}/profile: {args.rate:,.0f}/s over {args.connections} keep-alive "
          f"connections, {args.warmup:g}s warm-up + {args.seconds:g}s measured, {len(ids):,} member ids", flush=True)
    subprocess.run([sys.executable, __file__, "_loadgen", str(config_path), str(result_path)], check=True)
    return dict(orjson.loads(result_path.read_bytes()))


# ---------------------------------------------------------------------------------------------
# 5. Where the consumer's time goes (py-spy)


def py_spy_run(stack: Any, work: Path, dataset: Path, py_spy: str, *, batch: int | None, partitions: int,
               timeout: float) -> dict[str, Any]:
    prefix = f"bp{uuid.uuid4().hex[:6]}."
    published = publish_file(stack.kafka.bootstrap, dataset, prefix=prefix, partitions=partitions)
    raw = work / "py-spy.collapsed"
    recorder: dict[str, subprocess.Popen[bytes]] = {}

    def attach(service: Any) -> None:
        recorder["p"] = subprocess.Popen([py_spy, "record", "--pid", str(service.process.pid), "--rate", "250",
                                          "--format", "raw", "--output", str(raw), "--nonblocking"],
                                         stdout=subprocess.DEVNULL, stderr=open(work / "py-spy.log", "ab"))

    service, timings = time_consumer(stack, work, published, batch=batch, timeout=timeout, on_started=attach)
    try:
        recorder["p"].send_signal(signal.SIGINT)
        recorder["p"].wait(60)
    finally:
        service.stop()
    return {"timings": timings["windows"], "profile": summarise_collapsed(raw)}


def summarise_collapsed(path: Path, top: int = 22) -> dict[str, Any]:
    """Self and inclusive shares per function from py-spy's collapsed stacks (main thread's event loop
    and the others alike); idle samples are not recorded (py-spy skips them without --idle)."""
    if not path.exists():
        return {"error": f"no py-spy output at {path}"}
    self_samples: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";")[1:]]  # the first is the process/thread
        total += count
        if frames:
            self_samples[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    share = lambda n: round(100.0 * n / total, 1) if total else 0.0  # noqa: E731
    return {"samples": total,
            "self": [(name, share(n)) for name, n in self_samples.most_common(top)],
            "inclusive": [(name, share(n)) for name, n in inclusive.most_common(top * 3)]}


def _frame_name(frame: str) -> str:
    # "apply_sales (member_profile/store.py:130)" -> "apply_sales (member_profile/store.py)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "services/member-profile/", "shared/", "lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where})"


# ---------------------------------------------------------------------------------------------
# Report


def report(results: dict[str, Any]) -> list[str]:
    consumer = results["consumer"]
    lines = [f"consumer: member-profile, batch {results['args']['batch'] or 'default (2000)'}; "
             f"{consumer['events']:,} events / {consumer['lines']:,} sale lines pre-published "
             f"({results['published']['partitions']} partitions)",
             f"  /healthz after {consumer['healthz_after_s']:.1f} s, first applied batch seen after "
             f"{consumer['first_applied_after_s']:.1f} s ({consumer['applied_at_first_sample']:,.0f} events), all applied "
             f"after {consumer['all_applied_after_s']:.1f} s, lag 0 confirmed after "
             f"{consumer['lag_zero_confirmed_after_s']:.1f} s"]
    names = {"from_process_start": "from process start", "from_healthz": "from /healthz",
             "from_first_applied": "from first applied (steady)"}
    for key, window in consumer["windows"].items():
        lines.append(f"  {names[key]:<37} {window['seconds']:6.1f} s  {window['lines_per_s']:>9,.0f} lines/s  "
                     f"{window['events_per_s']:>7,.0f} events/s")
    for raw in results["raw_consume"]:
        label = "raw aiokafka consume + decode" if raw["decode"] else "raw aiokafka consume (no processing)"
        decode = f"; decode {raw['decode_seconds']:.1f} s" if raw["decode"] else ""
        lines.append(f"  {label:<37} {raw['from_start_s']:6.1f} s  {raw['lines_per_s']:>9,.0f} lines/s  "
                     f"{raw['events_per_s']:>7,.0f} events/s   (steady from first record: "
                     f"{raw['steady_lines_per_s']:,.0f} lines/s{decode})")
    read = results.get("read_latency")
    if read:
        sched, sent = read["latency_ms_from_schedule"], read["latency_ms_from_send"]
        lines.append(f"profile reads: {read['achieved_per_s']:,.0f} req/s achieved (asked {read['rate_asked']:,.0f}), "
                     f"{read['requests_measured']:,} measured, statuses {read['statuses']}, client errors "
                     f"{read['client_errors'] or 'none'}, peak in flight {read['in_flight_peak']}")
        lines.append(f"  latency from scheduled send  p50 {sched['p50']:5.2f} ms  p90 {sched['p90']:5.2f} ms  "
                     f"p99 {sched['p99']:6.2f} ms  p99.9 {sched['p999']:6.2f} ms  max {sched['max']:6.1f} ms")
        lines.append(f"  latency from actual send     p50 {sent['p50']:5.2f} ms  p90 {sent['p90']:5.2f} ms  "
                     f"p99 {sent['p99']:6.2f} ms  p99.9 {sent['p999']:6.2f} ms  max {sent['max']:6.1f} ms")
    exact = results.get("exactness")
    if exact:
        lines.append(f"exactness of this run vs the pandas anchor: {exact['matching']:,} / {exact['anchor_members']:,} "
                     f"members match on frequency, monetary, last purchase ({exact['served_members']:,} served)")
    lines.append("")
    steady = consumer["windows"]["from_first_applied"]["lines_per_s"]
    whole = consumer["windows"]["from_healthz"]["lines_per_s"]
    raw_rate = next((r["lines_per_s"] for r in results["raw_consume"] if not r["decode"]), float("nan"))
    targets = {"consumer_lines_per_s": whole >= TARGET_LINES_PER_S}
    lines.append(f"target >= {TARGET_LINES_PER_S:,.0f} sale lines/s (from /healthz to all applied)   "
                 f"{whole:>9,.0f}/s   {verdict(targets['consumer_lines_per_s'])}   "
                 f"(steady {steady:,.0f}/s; raw aiokafka consume {raw_rate:,.0f}/s, service = {whole / raw_rate:.0%} of it)")
    if read:
        p99 = read["latency_ms_from_schedule"]["p99"]
        targets["profile_p99"] = p99 < TARGET_P99_MS and read["achieved_per_s"] >= 0.95 * read["rate_asked"]
        lines.append(f"target profile GET p99 < {TARGET_P99_MS:.0f} ms at {read['rate_asked']:,.0f}/s            "
                     f"{p99:7.2f} ms   {verdict(targets['profile_p99'])}")
    results["targets"] = targets
    spy = results.get("py_spy")
    if spy and "profile" in spy and "self" in spy["profile"]:
        profile = spy["profile"]
        lines.append("")
        lines.append(f"py-spy (second consumer run, {profile['samples']:,} non-idle samples at 250 Hz, steady "
                     f"{spy['timings']['from_first_applied']['lines_per_s']:,.0f} lines/s under the profiler):")
        lines.append("  self time:      " + "; ".join(f"{n} {s}%" for n, s in profile["self"][:12]))
        interesting = [(n, s) for n, s in profile["inclusive"]
                       if any(k in n for k in ("member_profile", "crm_shared", "sqlalchemy/engine", "pydantic",
                                               "asyncpg", "aiokafka/consumer", "redis", "orjson"))]
        lines.append("  inclusive time: " + "; ".join(f"{n} {s}%" for n, s in interesting[:18]))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--batch", type=int, default=None, help="MEMBER_PROFILE_CONSUMER_BATCH (default: the service's)")
    parser.add_argument("--partitions", type=int, default=6, help="partitions of pos.sales.v1 (default 6)")
    parser.add_argument("--rate", type=float, default=1000.0, help="profile GETs per second (default 1000)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds of the read load (default 20)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of read load before measuring (default 2)")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections of the read load")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the consumer (default 1800)")
    parser.add_argument("--skip-exactness", action="store_true", help="do not compare this run with the pandas anchor")
    parser.add_argument("--py-spy", default=None, metavar="PATH", help="a py-spy binary: profile a second consumer run")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    require_dataset(args.dataset)

    work = Path(tempfile.mkdtemp(prefix="crm-bench-member-profile-"))
    results: dict[str, Any] = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "cores": os.cpu_count(),
                               "load_average_before": os.getloadavg(),
                               "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} (shared; timings are noisy)")
    stack = start_stack(work)
    try:
        bootstrap = stack.kafka.bootstrap
        print("\n[1/4] member-profile consuming the pre-published file", flush=True)
        published = publish_file(bootstrap, args.dataset, prefix=f"bt{uuid.uuid4().hex[:6]}.", partitions=args.partitions)
        results["published"] = {**published.__dict__, "partitions": args.partitions}
        service, results["consumer"] = time_consumer(stack, work, published, batch=args.batch, timeout=args.timeout)
        try:
            window = results["consumer"]["windows"]["from_healthz"]
            print(f"  all {published.events:,} events applied {window['seconds']:.1f} s after /healthz: "
                  f"{window['lines_per_s']:,.0f} lines/s", flush=True)
            members = fetch_members(service.url)
            print("\n[2/4] profile-read latency", flush=True)
            results["read_latency"] = run_read_load(service.port, sorted(members), args, work)
        finally:
            service.stop()

        print("\n[3/4] raw aiokafka consume of the same topic", flush=True)
        results["raw_consume"] = []
        for decode in (False, True):
            batch = args.batch or 2000
            results["raw_consume"].append(asyncio.run(raw_consume(bootstrap, published.topic, published.events,
                                                                  published.lines, batch=batch, decode=decode)))

        if args.py_spy:
            print("\n[py-spy] a second consumer run under the sampling profiler", flush=True)
            results["py_spy"] = py_spy_run(stack, work, args.dataset, args.py_spy, batch=args.batch,
                                           partitions=args.partitions, timeout=args.timeout)
    finally:
        stack.discard()  # and its data (CRM_KEEP_STACK_STATE=1 keeps it)

    if not args.skip_exactness:
        print("\n[4/4] exactness of this run vs the pandas anchor", flush=True)
        outcome = compare(anchor_from_csv(args.dataset).figures, served_figures(members))
        results["exactness"] = {k: v for k, v in outcome.items() if k != "mismatches"}
        results["exactness"]["first_mismatches"] = outcome["mismatches"][:20]

    results["load_average_after"] = os.getloadavg()
    lines = report(results)
    print("\n".join(["", "=" * 110, f"member-profile bench: {results['when']}  ({os.cpu_count()} cores, shared machine; "
                     f"load average before {results['load_average_before'][0]:.2f}, after "
                     f"{results['load_average_after'][0]:.2f})", "=" * 110, *lines, "=" * 110]))
    results["report"] = lines
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(f"results written to {args.json}; logs in {work}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_loadgen":
        loadgen_main(sys.argv[2], sys.argv[3])
    else:
        sys.exit(main())
