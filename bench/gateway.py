"""pos-gateway throughput and latency on the embedded stack, beside the ceilings of the same machine.

    .venv/bin/python bench/gateway.py [--seconds 60] [--clients 64]

One run starts the embedded broker, PostgreSQL and Redis, then measures, with one lean HTTP/1.1
keep-alive load generator running in its own process (so the server under test keeps a core):

1. the real gateway (`python -m pos_gateway`): accepted (202) sales/s, 4 lines per sale, and the
   latency of every request; then checks that every accepted sale is on `pos.sales.v1` exactly once;
2. ceiling (a): a bare FastAPI app answering `GET /healthz`, same uvicorn settings;
3. ceiling (b): bare aiokafka produce rate of the same events (acks=all, no idempotence);
4. ceiling (c): a bare FastAPI app whose `POST /v1/sales` parses the JSON and `await producer.send()`s
   it, no database: the anchor of the "at least half the ceiling" target.

It always exits 0: it is a report. Results also go to `bench/results/gateway.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from fastapi import Request

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "gateway.json"
CEILING_PREFIX = "bench.ceiling."
LINES_PER_SALE = 4
STORES = [f"s{n:03d}" for n in range(1, 39)]
TERMINALS = [f"t{n}" for n in range(1, 5)]
SALE_ID_SLOT = "@@SALE-ID@@"
WORDS = ("white", "hanging", "heart", "t-light", "holder", "red", "retrospot", "cake", "case", "jumbo", "bag",
         "vintage", "glass", "lantern", "wooden", "frame", "set", "of", "3", "ceramic", "mug", "pink", "paper",
         "chain", "kit", "regency", "teacup", "saucer", "alarm", "clock", "bakelike", "lunch", "box")

TARGET_SALES_PER_S = 2000.0
TARGET_P99_MS = 50.0
TARGET_SHARE_OF_CEILING = 0.5


# ---------------------------------------------------------------------------------------------
# What the terminals send


def sale_body(rng: random.Random, now: datetime) -> dict[str, Any]:
    """One realistic sale: a store of the chain, a member most of the time, four priced lines."""
    lines = []
    for _ in range(LINES_PER_SALE):
        quantity = rng.choice((1, 1, 1, 2, 2, 3, 4, 6, 12))
        unit_price = rng.choice((0.42, 0.85, 1.25, 1.65, 2.10, 2.55, 2.95, 3.75, 4.95, 7.95, 12.75, 18.00, 39.95))
        discount = "0.50" if rng.random() < 0.1 and quantity * unit_price > 1 else "0"
        description = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 6))).upper()
        lines.append({"sku": f"{rng.randint(10000, 99999)}{rng.choice(('', '', 'A', 'B'))}",
                      "description": description, "quantity": quantity,
                      "unit_price": f"{unit_price:.2f}", "discount": discount})
    member = f"m{rng.randint(1, 60000):06d}" if rng.random() < 0.8 else None
    occurred_at = now - timedelta(seconds=rng.randint(60, 7 * 24 * 3600))
    return {"sale_id": SALE_ID_SLOT, "store_id": rng.choice(STORES), "terminal_id": rng.choice(TERMINALS),
            "member_id": member, "occurred_at": occurred_at.isoformat(), "currency": "GBP", "kind": "sale",
            "lines": lines}


def sale_id(run_id: str, client: int, seq: int) -> str:
    # Fixed width, so a template's Content-Length is known before the id is filled in.
    return f"b{run_id}-{client:03d}-{seq:09d}"


@dataclass
class RequestTemplate:
    store_id: str
    terminal_id: str
    head: bytes  # request line + headers + body up to the sale id
    tail: bytes  # body after the sale id


def post_templates(count: int, seed: int, host: str, sale_id_width: int) -> list[RequestTemplate]:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    templates = []
    for _ in range(count):
        body = sale_body(rng, now)
        before, after = orjson.dumps(body).split(SALE_ID_SLOT.encode())
        length = len(before) + sale_id_width + len(after)
        headers = (f"POST /v1/sales HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                   f"X-API-Key: dev-pos-{body['store_id']}\r\nContent-Length: {length}\r\n\r\n").encode()
        templates.append(RequestTemplate(body["store_id"], body["terminal_id"], headers + before, after))
    return templates


def sample_events(count: int, seed: int = 7) -> list[tuple[bytes, bytes]]:
    """The gateway's events for sales like the load generator's: (key, value) as the relay sends them."""
    from crm_shared.events import Sale, sale_recorded
    from crm_shared.serde import encode, encode_key

    rng = random.Random(seed)
    now = datetime.now(UTC)
    events = []
    for index in range(count):
        body = sale_body(rng, now)
        body["sale_id"] = sale_id("sample", 0, index)
        event = sale_recorded(Sale.model_validate(body), source="pos-gateway")
        events.append((encode_key(event.key), encode(event)))
    return events


# ---------------------------------------------------------------------------------------------
# The load generator (runs in its own process: `gateway.py _loadgen CONFIG.json RESULT.json`)


def percentile(ordered: list[float], share: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    at = head.find(b"content-length:")
    if at < 0:
        at = head.lower().find(b"content-length:")
    if at < 0:
        raise RuntimeError(f"response without Content-Length: {head[:200]!r}")
    end = head.index(b"\r\n", at)
    length = int(head[at + 15:end])
    if length:
        await reader.readexactly(length)
    return status


async def _loadgen(config: dict[str, Any]) -> dict[str, Any]:
    host, port, clients = config["host"], config["port"], config["clients"]
    seconds, warmup = config["seconds"], config["warmup"]
    mode = config["mode"]  # "post" | "get"
    run_id = config["run_id"]
    templates: list[RequestTemplate] = []
    if mode == "post":
        width = len(sale_id(run_id, 0, 0))
        templates = post_templates(config["templates"], config["seed"], f"{host}:{port}", width)
    get_request = f"GET {config.get('path', '/healthz')} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()

    connections = [await asyncio.open_connection(host, port) for _ in range(clients)]
    statuses: Counter[int] = Counter()
    measured_statuses: Counter[int] = Counter()
    latencies: list[float] = []
    accepted: list[tuple[int, str]] = []  # (template index, sale id) of every 202
    errors: Counter[str] = Counter()
    per_second: Counter[int] = Counter()  # ok answers by second of the measured window
    done = 0
    clock = time.perf_counter
    start = clock()
    measure_from = start + warmup
    deadline = measure_from + seconds

    async def client(number: int) -> None:
        nonlocal done
        reader, writer = connections[number]
        seq = 0
        while clock() < deadline:
            seq += 1
            if mode == "post":
                index = (number * 7919 + seq) % len(templates)
                template = templates[index]
                ident = sale_id(run_id, number, seq)
                request = template.head + ident.encode() + template.tail
            else:
                request = get_request
            sent_at = clock()
            try:
                writer.write(request)
                status = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError, RuntimeError, ValueError) as exc:
                errors[type(exc).__name__] += 1
                writer.close()
                await asyncio.sleep(0.05)
                reader, writer = await asyncio.open_connection(host, port)
                continue
            answered_at = clock()
            done += 1
            statuses[status] += 1
            if status == 202 and mode == "post":
                accepted.append((index, ident))
            if measure_from <= sent_at and answered_at <= deadline:
                measured_statuses[status] += 1
                latencies.append(answered_at - sent_at)
                if status in (200, 202):
                    per_second[int(answered_at - measure_from)] += 1
        writer.close()

    async def progress() -> None:
        last_done, last_at = 0, start
        while True:
            await asyncio.sleep(5)
            now = clock()
            phase = "warm-up" if now < measure_from else "measuring"
            print(f"    [{config['label']}] {now - start:5.1f}s {phase}: {done:,} answers, "
                  f"{(done - last_done) / (now - last_at):,.0f}/s now, statuses {dict(statuses)}",
                  file=sys.stderr, flush=True)
            last_done, last_at = done, now

    reporter = asyncio.create_task(progress())
    await asyncio.gather(*(client(n) for n in range(clients)))
    reporter.cancel()
    ordered = sorted(latencies)
    ok_status = 202 if mode == "post" else 200
    return {
        "label": config["label"], "clients": clients, "seconds": seconds, "warmup": warmup,
        "ok_status": ok_status,
        "ok_per_s": measured_statuses[ok_status] / seconds,
        "answers_per_s": len(latencies) / seconds,
        "measured_statuses": {str(k): v for k, v in sorted(measured_statuses.items())},
        "all_statuses": {str(k): v for k, v in sorted(statuses.items())},
        "client_errors": dict(errors),
        "ok_per_second": [per_second[i] for i in range(int(seconds))],
        "latency_ms": {"p50": percentile(ordered, 0.50) * 1000, "p90": percentile(ordered, 0.90) * 1000,
                       "p99": percentile(ordered, 0.99) * 1000, "max": (ordered[-1] if ordered else float("nan")) * 1000,
                       "mean": (sum(ordered) / len(ordered) * 1000) if ordered else float("nan")},
        "accepted": [[templates[i].store_id, templates[i].terminal_id, ident] for i, ident in accepted],
    }


def loadgen_main(config_path: str, result_path: str) -> None:
    import uvloop

    config = json.loads(Path(config_path).read_text())
    result = uvloop.run(_loadgen(config))
    Path(result_path).write_bytes(orjson.dumps(result))


def run_load(label: str, *, port: int, mode: str, args: argparse.Namespace, work: Path, seconds: float) -> dict[str, Any]:
    config = {"label": label, "host": "127.0.0.1", "port": port, "mode": mode, "clients": args.clients,
              "seconds": seconds, "warmup": args.warmup, "templates": 2048, "seed": 11,
              "run_id": f"{random.randrange(16**6):06x}"}
    config_path, result_path = work / f"load-{label}.json", work / f"load-{label}.result.json"
    config_path.write_text(json.dumps(config))
    print(f"  load: {args.clients} clients, {args.warmup:g}s warm-up + {seconds:g}s measured, {mode.upper()} -> :{port}",
          flush=True)
    subprocess.run([sys.executable, __file__, "_loadgen", str(config_path), str(result_path)], check=True)
    return dict(orjson.loads(result_path.read_bytes()))


# ---------------------------------------------------------------------------------------------
# Ceiling servers (each its own process: `gateway.py _serve healthz|produce --port P ...`)


def serve_main(kind: str, port: int, bootstrap: str | None, topic: str | None) -> None:
    from contextlib import asynccontextmanager

    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, ORJSONResponse

    producer: Any = None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        nonlocal producer
        if kind == "produce":
            from crm_shared.kafka import make_producer

            producer = make_producer(bootstrap or "", client_id="bench-ceiling-app")
            await producer.start()
        try:
            yield
        finally:
            if producer is not None:
                await producer.stop()

    app = FastAPI(lifespan=lifespan, default_response_class=ORJSONResponse)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/sales", status_code=202)
    async def post_sale(request: Request) -> Any:
        body = await request.body()
        sale = orjson.loads(body)
        key = (sale.get("member_id") or sale["store_id"]).encode()
        await producer.send(topic, value=body, key=key)
        return JSONResponse({"sale_id": sale["sale_id"], "status": "accepted"}, status_code=202)

    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, access_log=False, loop="uvloop", http="httptools")


@contextlib.contextmanager
def ceiling_server(kind: str, port: int, work: Path, bootstrap: str, topic: str) -> Any:
    log = open(work / f"ceiling-{kind}.log", "ab")
    process = subprocess.Popen([sys.executable, __file__, "_serve", kind, "--port", str(port), "--bootstrap", bootstrap,
                                "--topic", topic], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"ceiling app {kind} exited with {process.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()


# ---------------------------------------------------------------------------------------------
# Ceiling (b): the broker alone


async def bare_produce(bootstrap: str, topic: str, events: list[tuple[bytes, bytes]], seconds: float) -> dict[str, Any]:
    from crm_shared.kafka import make_producer

    # The gateway relay's producer settings (make_producer's defaults: acks=all, no idempotence).
    producer = make_producer(bootstrap, client_id="bench-bare-produce")
    await producer.start()
    delivered = 0
    failed = 0

    def count(future: asyncio.Future[Any]) -> None:
        nonlocal delivered, failed
        if future.cancelled() or future.exception() is not None:
            failed += 1
        else:
            delivered += 1

    try:
        start = time.perf_counter()
        sent = 0
        next_report = start + 5
        while time.perf_counter() - start < seconds:
            for _ in range(500):
                key, value = events[sent % len(events)]
                future = await producer.send(topic, value=value, key=key)
                future.add_done_callback(count)
                sent += 1
            if time.perf_counter() >= next_report:
                next_report += 5
                print(f"    [bare produce] {time.perf_counter() - start:5.1f}s: {sent:,} sent, {delivered:,} acked",
                      file=sys.stderr, flush=True)
        await producer.flush()
        elapsed = time.perf_counter() - start
    finally:
        await producer.stop()
    size = sum(len(v) for _, v in events) / len(events)
    return {"events_per_s": delivered / elapsed, "delivered": delivered, "failed": failed, "seconds": elapsed,
            "mean_event_bytes": size}


# ---------------------------------------------------------------------------------------------
# The gateway run and its checks


async def verify_topic(bootstrap: str, topic: str, accepted: list[list[str]], timeout: float) -> dict[str, Any]:
    from crm_shared.events import sale_event_id
    from crm_shared.testing import read_topic

    expected = {str(sale_event_id(store, terminal, ident)) for store, terminal, ident in accepted}
    started = time.monotonic()
    records = await read_topic(bootstrap, topic, expected=len(expected), timeout=timeout, settle=2.0)
    seen: Counter[str] = Counter(orjson.loads(record.value)["event_id"] for record in records)
    result = {
        "accepted": len(accepted), "records_on_topic": len(records), "distinct_event_ids": len(seen),
        "duplicates": sum(n - 1 for n in seen.values() if n > 1),
        "missing": len(expected - set(seen)), "unexpected": len(set(seen) - expected),
        "read_seconds": time.monotonic() - started,
    }
    result["exactly_once"] = (result["missing"] == 0 and result["duplicates"] == 0 and result["unexpected"] == 0
                              and result["distinct_event_ids"] == result["accepted"])
    return result


def run_gateway(stack: Any, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from crm_shared.embedded import free_port
    from crm_shared.testing import ServiceProcess
    from crm_shared.topics import POS_SALES

    port = free_port()
    env = {**stack.env(), "POS_GATEWAY_PORT": str(port), "CRM_ENV": "development", "CRM_TOPIC_PREFIX": "",
           **dict(item.split("=", 1) for item in args.gateway_env)}
    module = "pos_gateway"
    if args.gc_probe != "off":  # the same gateway, its GC pauses logged (and frozen after imports with "freeze")
        module = "gc_probe"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
        env["BENCH_GC_FREEZE"] = "1" if args.gc_probe == "freeze" else "0"
    gateway = ServiceProcess(module, env, port=port, log_path=work / "pos-gateway.log").start(timeout=120)
    try:
        print(f"  pos-gateway up on :{port} (pid {gateway.process.pid if gateway.process else '?'}), "
              f"log {gateway.log_path}", flush=True)
        load = run_load("gateway", port=port, mode="post", args=args, work=work, seconds=args.seconds)
        print(f"  load done: {len(load['accepted']):,} sales accepted; checking {POS_SALES.name} ...", flush=True)
        if env.get("POS_GATEWAY_RELAY_ENABLED", "true").lower() in ("false", "0", "no"):
            print("  relay disabled by --gateway-env: no topic check", flush=True)
            return load
        load["topic_check"] = asyncio.run(verify_topic(stack.kafka.bootstrap, POS_SALES.qualified(""), load["accepted"],
                                                       timeout=max(120.0, 4 * args.seconds)))
        if gateway.process is not None and gateway.process.poll() is not None:
            load["gateway_exit"] = gateway.process.returncode
    finally:
        gateway.stop()
    return load


# ---------------------------------------------------------------------------------------------
# Report


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def summarise(results: dict[str, Any]) -> list[str]:
    gw, hz, produce, app = (results.get(k) for k in ("gateway", "ceiling_healthz", "ceiling_produce",
                                                      "ceiling_fastapi_produce"))
    lines = ["", "=" * 100, "pos-gateway bench: " + results["when"] + f"  ({os.cpu_count()} cores)", "=" * 100]

    def row(name: str, load: dict[str, Any] | None, unit: str) -> str:
        if not load:
            return f"{name:<44} (not run)"
        lat = load["latency_ms"]
        return (f"{name:<44} {load['ok_per_s']:>9,.0f} {unit:<9} p50 {lat['p50']:6.1f} ms  p99 {lat['p99']:6.1f} ms  "
                f"max {lat['max']:7.1f} ms")

    lines.append(row("pos-gateway POST /v1/sales (202 only)", gw, "sales/s"))
    lines.append(row("ceiling (a) bare FastAPI GET /healthz", hz, "req/s"))
    if produce:
        lines.append(f"{'ceiling (b) bare aiokafka produce':<44} {produce['events_per_s']:>9,.0f} {'events/s':<9} "
                     f"({produce['mean_event_bytes']:.0f} B/event, acks=all, no idempotence)")
    else:
        lines.append(f"{'ceiling (b) bare aiokafka produce':<44} (not run)")
    lines.append(row("ceiling (c) bare FastAPI + produce POST", app, "sales/s"))
    lines.append("")
    for name, load in (("gateway", gw), ("ceiling (a)", hz), ("ceiling (c)", app)):
        if load and load["ok_per_second"]:
            steady = sorted(load["ok_per_second"])
            lines.append(f"{name:<12} per-second rate: min {steady[0]:,}  median {steady[len(steady) // 2]:,}  "
                         f"max {steady[-1]:,}")
    for name, load in (("gateway", gw), ("ceiling (a)", hz), ("ceiling (c)", app)):
        if load:
            non_ok = {k: v for k, v in load["all_statuses"].items() if int(k) != load["ok_status"]}
            lines.append(f"{name:<12} answers {sum(load['all_statuses'].values()):,}; non-{load['ok_status']} by status: "
                         f"{non_ok or 'none'}; client errors: {load['client_errors'] or 'none'}")
    if gw and "topic_check" in gw:
        check = gw["topic_check"]
        lines.append(f"topic check pos.sales.v1: accepted {check['accepted']:,}, records {check['records_on_topic']:,}, "
                     f"distinct event ids {check['distinct_event_ids']:,}, duplicates {check['duplicates']:,}, "
                     f"missing {check['missing']:,}, unexpected {check['unexpected']:,} -> "
                     f"{'EXACTLY ONCE' if check['exactly_once'] else 'NOT EXACTLY ONCE'}")
    lines.append("")
    targets: dict[str, Any] = {}

    def target(name: str, figure: str, ok: bool) -> str:
        return f"target {name:<52} {figure:>12}   {verdict(ok)}"

    if gw:
        rate, p99 = gw["ok_per_s"], gw["latency_ms"]["p99"]
        targets["sales_per_s"] = rate >= TARGET_SALES_PER_S
        targets["p99"] = p99 < TARGET_P99_MS
        lines.append(target(f">= {TARGET_SALES_PER_S:,.0f} accepted sales/s", f"{rate:,.0f}/s", targets["sales_per_s"]))
        lines.append(target(f"p99 < {TARGET_P99_MS:.0f} ms", f"{p99:.1f} ms", targets["p99"]))
        if app:
            share = rate / app["ok_per_s"] if app["ok_per_s"] else 0.0
            targets["share_of_ceiling"] = share >= TARGET_SHARE_OF_CEILING
            lines.append(target(f">= {TARGET_SHARE_OF_CEILING:.0%} of bare FastAPI+produce ({app['ok_per_s']:,.0f}/s)",
                                f"{share:.1%}", targets["share_of_ceiling"]))
        if "topic_check" in gw:
            targets["exactly_once"] = gw["topic_check"]["exactly_once"]
            lines.append(target("every accepted sale on pos.sales.v1 exactly once",
                                f"{gw['topic_check']['distinct_event_ids']:,}", targets["exactly_once"]))
    results["targets"] = targets
    lines.append("=" * 100)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds of each HTTP run (default 60)")
    parser.add_argument("--ceiling-seconds", type=float, default=None,
                        help="measured seconds of each ceiling (default: --seconds)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent keep-alive connections (default 64)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring (default 3)")
    parser.add_argument("--skip-ceilings", action="store_true", help="measure the gateway only")
    parser.add_argument("--skip-gateway", action="store_true", help="measure the ceilings only")
    parser.add_argument("--gateway-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for the gateway, for experiments (e.g. POS_GATEWAY_LIVE_STATS_ENABLED=false)")
    parser.add_argument("--gc-probe", choices=("off", "measure", "freeze"), default="off",
                        help="experiment: run the gateway under bench/gc_probe.py to log GC pauses (and gc.freeze())")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="embedded stack folder, kept after the run (default: a temp folder, removed)")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"where the results go (default {RESULTS})")
    args = parser.parse_args(argv)
    ceiling_seconds = args.ceiling_seconds or args.seconds

    from crm_shared.embedded import EmbeddedStack, free_port
    from crm_shared.kafka import ensure_topics
    from crm_shared.topics import POS_SALES

    work = Path(tempfile.mkdtemp(prefix="crm-bench-gateway-"))
    state = args.state_dir or work / "stack"
    print(f"starting the embedded stack in {state} ...", flush=True)
    stack = EmbeddedStack.create(state)
    stack.start()
    results: dict[str, Any] = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "cores": os.cpu_count(),
                               "args": {"seconds": args.seconds, "ceiling_seconds": ceiling_seconds,
                                        "clients": args.clients, "warmup": args.warmup,
                                        "lines_per_sale": LINES_PER_SALE, "gateway_env": args.gateway_env,
                                        "gc_probe": args.gc_probe}}
    try:
        bootstrap = stack.kafka.bootstrap
        asyncio.run(ensure_topics(bootstrap, prefix=""))
        asyncio.run(ensure_topics(bootstrap, prefix=CEILING_PREFIX, topics=[POS_SALES]))
        ceiling_topic = POS_SALES.qualified(CEILING_PREFIX)

        if not args.skip_gateway:
            print("\n[1/4] pos-gateway (python -m pos_gateway)", flush=True)
            results["gateway"] = run_gateway(stack, args, work)
        if not args.skip_ceilings:
            print("\n[2/4] ceiling (a): bare FastAPI GET /healthz", flush=True)
            port = free_port()
            with ceiling_server("healthz", port, work, bootstrap, ceiling_topic):
                results["ceiling_healthz"] = run_load("healthz", port=port, mode="get", args=args, work=work,
                                                      seconds=ceiling_seconds)
            print("\n[3/4] ceiling (b): bare aiokafka produce of the same events", flush=True)
            events = sample_events(2048)
            results["ceiling_produce"] = asyncio.run(bare_produce(bootstrap, ceiling_topic, events, ceiling_seconds))
            print("\n[4/4] ceiling (c): bare FastAPI POST + producer.send, no database", flush=True)
            port = free_port()
            with ceiling_server("produce", port, work, bootstrap, ceiling_topic):
                results["ceiling_fastapi_produce"] = run_load("fastapi-produce", port=port, mode="post", args=args,
                                                              work=work, seconds=ceiling_seconds)
    finally:
        if args.state_dir is None:  # a run leaves 0.5-2 GB of PostgreSQL data behind; the logs stay
            stack.discard()
        else:
            stack.stop()

    report = summarise(results)
    print("\n".join(report), flush=True)
    for load_name in ("gateway", "ceiling_healthz", "ceiling_fastapi_produce"):
        if load_name in results:
            results[load_name].pop("accepted", None)
    results["report"] = report
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(f"results written to {args.json}; logs in {work}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_loadgen":
        loadgen_main(sys.argv[2], sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "_serve":
        serving = argparse.ArgumentParser()
        serving.add_argument("kind", choices=("healthz", "produce"))
        serving.add_argument("--port", type=int, required=True)
        serving.add_argument("--bootstrap")
        serving.add_argument("--topic")
        served = serving.parse_args(sys.argv[2:])
        serve_main(served.kind, served.port, served.bootstrap, served.topic)
    else:
        sys.exit(main())
