"""`crm`: run the retail CRM on one machine, replay real sales into it, and look at it.

    crm up          start the broker, PostgreSQL, Redis and every service; Ctrl-C stops all
    crm demo        `crm up` + replay a month of real sales + print where to look
    crm replay F    send a sales file through the gateway (http) or straight onto Kafka
    crm status      each component up or down, consumer lag per group
    crm republish   publish recorded sales again from the gateway's ledger
    crm topics create   create every topic (and its .dlq twin)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import orjson
import typer

from crm_shared.embedded import EmbeddedStack, free_port, port_is_free
from crm_shared.kafka import consumer_lag, ensure_topics, wait_for_broker
from crm_shared.processes import ServiceProcess
from crm_shared.replay import print_table, publish_catalog, replay_http, replay_kafka
from crm_shared.services import SERVICES, installed_services
from crm_shared.settings import CommonSettings
from crm_shared.topics import CATALOG_PRODUCTS

if TYPE_CHECKING:
    from crm_shared.events import Sale

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
topics_app = typer.Typer(help="Topic administration", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
catalog_app = typer.Typer(help="Product catalog", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_FILE = REPO_ROOT / "deploy" / "demo-data" / "online_retail_2010-12.csv.gz"
DEV_PORTS = {"kafka": 19092, "postgres": 15432, "redis": 16379}
ENDPOINT_VARS = ("CRM_KAFKA_BOOTSTRAP", "CRM_DATABASE_URL", "CRM_REDIS_URL")


def default_state_dir() -> Path:
    return Path(os.environ.get("CRM_STATE_DIR", ".crm")).resolve()


def state_file(state_dir: Path) -> Path:
    return state_dir / "running.json"


def echo(text: str = "") -> None:
    typer.echo(text)


@dataclass
class Runtime:
    """What `crm up` runs: the embedded parts it had to provide, and one process per service."""

    state_dir: Path
    env: dict[str, str]
    stack: EmbeddedStack | None
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    @classmethod
    def start(cls, state_dir: Path, *, fresh: bool = False, only: list[str] | None = None) -> Runtime:
        if fresh and state_dir.exists():
            shutil.rmtree(state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        env = {var: os.environ[var] for var in ENDPOINT_VARS if os.environ.get(var)}
        stack: EmbeddedStack | None = None
        if len(env) < len(ENDPOINT_VARS):
            ports = {name: port if port_is_free(port) else free_port() for name, port in DEV_PORTS.items()}
            stack = EmbeddedStack.create(state_dir / "stack", kafka_port=ports["kafka"],
                                         postgres_port=ports["postgres"], redis_port=ports["redis"])
            echo("starting the embedded stack (tansu broker, PostgreSQL 16, Redis)…")
            stack.start()
            for var, value in stack.env().items():
                env.setdefault(var, value)
        runtime = cls(state_dir, env, stack)
        try:
            runtime._prepare()
            runtime._start_services(only)
        except BaseException:
            runtime.stop()
            raise
        runtime.write_state()
        return runtime

    def settings(self) -> CommonSettings:
        return CommonSettings(**{k.removeprefix("CRM_").lower(): v for k, v in self.env.items()})

    def _prepare(self) -> None:
        common = self.settings()
        asyncio.run(wait_for_broker(common.kafka_bootstrap))
        created = asyncio.run(ensure_topics(common.kafka_bootstrap, prefix=common.topic_prefix,
                                            partitions=common.topic_partitions, replication=common.topic_replication))
        echo(f"topics ready ({len(created)} created)")

    def _start_services(self, only: list[str] | None) -> None:
        logs = self.state_dir / "logs"
        logs.mkdir(exist_ok=True)
        for spec in installed_services():
            if only and spec.name not in only:
                continue
            if not port_is_free(spec.port):
                raise typer.BadParameter(f"port {spec.port} for {spec.name} is taken: stop what uses it first")
            env = {**self.env, f"{spec.env_prefix}PORT": str(spec.port), f"{spec.env_prefix}HOST": "127.0.0.1"}
            echo(f"starting {spec.name} on :{spec.port} (migrations run first)…")
            process = ServiceProcess(spec.module, env, port=spec.port, log_path=logs / f"{spec.name}.log")
            process.start(timeout=90)
            self.services[spec.name] = process

    def write_state(self) -> None:
        state = {"env": self.env, "services": {name: p.url for name, p in self.services.items()},
                 "pid": os.getpid(), "embedded": self.stack is not None}
        state_file(self.state_dir).write_bytes(orjson.dumps(state, option=orjson.OPT_INDENT_2))

    def supervise(self, stop_when: Any = None) -> None:
        """Wait for Ctrl-C (or `stop_when()`), restarting a service that dies."""
        restarts: dict[str, list[float]] = {}
        while stop_when is None or not stop_when():
            time.sleep(0.5)
            for name, process in self.services.items():
                if process.alive:
                    continue
                recent = [t for t in restarts.get(name, []) if time.monotonic() - t < 60]
                if len(recent) >= 5:
                    echo(f"{name} keeps dying; see {process.log_path}")
                    continue
                echo(f"{name} exited; restarting it (log: {process.log_path})")
                restarts[name] = [*recent, time.monotonic()]
                with contextlib.suppress(Exception):
                    process.start(timeout=90)

    def stop(self) -> None:
        for process in self.services.values():
            process.stop()
        if self.stack is not None:
            self.stack.stop()
        with contextlib.suppress(OSError):
            state_file(self.state_dir).unlink()

    def banner(self) -> None:
        echo()
        echo("Retail CRM is up.")
        stack_note = " (embedded)" if self.stack is not None else ""
        echo(f"  broker       {self.env['CRM_KAFKA_BOOTSTRAP']}{stack_note}"
             + ("  — tansu, memory-only: a restart starts empty; the gateway ledger is the record" if self.stack else ""))
        echo(f"  PostgreSQL   {self.env['CRM_DATABASE_URL']}{stack_note}")
        echo(f"  Redis        {self.env['CRM_REDIS_URL']}{stack_note}")
        for name, process in self.services.items():
            echo(f"  {name:<12} {process.url}   API docs {process.url}/docs   metrics {process.url}/metrics")
        missing = [spec.name for spec in SERVICES if not spec.installed()]
        if missing:
            echo(f"  (not built yet: {', '.join(missing)})")
        echo("Dev keys (refused when CRM_ENV=production):")
        echo("  dev-pos-<store_id>   a terminal key for that store, e.g. dev-pos-or-united-kingdom")
        echo("  dev-ops   dev-marketing   dev-supplier-<supplier_id>")
        echo(f"Logs: {self.state_dir / 'logs'}   Status: crm status   Stop: Ctrl-C")


def _stop_flag() -> Any:
    flag = {"stop": False}

    def handler(_signum: int, _frame: Any) -> None:
        flag["stop"] = True

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return lambda: flag["stop"]


@app.command()
def up(state_dir: Annotated[Path, typer.Option(help="where the embedded stack keeps its data")] = default_state_dir(),
       fresh: Annotated[bool, typer.Option(help="start from empty data")] = False,
       service: Annotated[list[str] | None, typer.Option(help="only these services (repeatable)")] = None) -> None:
    """Start the broker, PostgreSQL, Redis (embedded unless CRM_* endpoints are set) and every service."""
    runtime = Runtime.start(state_dir, fresh=fresh, only=service)
    try:
        runtime.banner()
        runtime.supervise(_stop_flag())
    finally:
        echo("stopping…")
        runtime.stop()


@app.command()
def demo(file: Annotated[Path, typer.Option(help="sales file to replay")] = DEMO_FILE,
         state_dir: Annotated[Path, typer.Option()] = default_state_dir() / "demo",
         exit_after_replay: Annotated[bool, typer.Option(help="stop once the summary is printed")] = False) -> None:
    """A fresh system, a month of real sales (UCI Online Retail, Dec 2010) through it, and where to look."""
    from crm_shared.datasets.online_retail import load_sales

    if not file.exists():
        raise typer.BadParameter(f"{file} not found")
    runtime = Runtime.start(state_dir, fresh=True)
    stop = _stop_flag()
    try:
        runtime.banner()
        sales, summary = load_sales(file)
        print_table(f"\nLoaded {file.name}:", summary.as_table(), echo)
        if "replenishment" in runtime.services:  # products and supplier terms, so stock can be reordered
            from crm_shared.supplier_terms import products_from_sales

            common = runtime.settings()
            listed = asyncio.run(publish_catalog(products_from_sales(sales), bootstrap=common.kafka_bootstrap,
                                                 topic_prefix=common.topic_prefix))
            echo(f"Catalog: {listed:,} products with supplier terms (generated from a seed: the data has none)")
            _wait_for_lag_zero(common, timeout=60)  # the terms are in before the first sale is
        gateway = runtime.services["pos-gateway"].url
        if "member-profile" in runtime.services:
            enrolled, consenting = asyncio.run(_enrol_demo_members(sales, runtime.services["member-profile"].url))
            echo(f"Enrolled {enrolled:,} of the data's members at the loyalty desk, {consenting:,} of them with e-mail "
                 f"and push consent (generated from a seed: the data has no enrolments)")
        # the first week, then a pause for the segmenter's first basket rules, then the rest: cross-sell
        # needs rules, and a replay as fast as possible would be over before they are mined
        cut = min(s.occurred_at for s in sales) + timedelta(days=7)
        first_week = [s for s in sales if s.occurred_at < cut]
        rest = [s for s in sales if s.occurred_at >= cut]
        outcome = asyncio.run(replay_http(first_week, gateway_url=gateway, api_key=None, speed=None))
        if rest and "segmenter" in runtime.services:
            _wait_for_lag_zero(runtime.settings(), timeout=120)
            time.sleep(12)  # the segmenter publishes changed rules every 10 s
        if rest:
            more = asyncio.run(replay_http(rest, gateway_url=gateway, api_key=None, speed=None))
            outcome = outcome.plus(more)
        print_table("\nReplay through the gateway:", outcome.as_table(), echo)
        _wait_for_lag_zero(runtime.settings(), timeout=120)
        _print_live_stats(gateway)
        if "segmenter" in runtime.services:
            time.sleep(2)  # member-profile's last profiles reach the segmenter through its outbox
            _wait_for_lag_zero(runtime.settings(), timeout=60)
            _print_segments(runtime.services["segmenter"].url)
        if "replenishment" in runtime.services:
            _print_orders(runtime.services["replenishment"].url)
        if "notifier" in runtime.services:
            _wait_for_lag_zero(runtime.settings(), timeout=60)  # segment and tier events reach the notifier last
            _print_offers(runtime.services["notifier"].url)
        echo(f"\nLook at: {gateway}/docs  ·  {gateway}/v1/stats/live (X-API-Key: dev-ops)  ·  crm status")
        if "ops-console" in runtime.services:
            echo(f"Ops console: {runtime.services['ops-console'].url}/?key=dev-ops  (the key is kept in a cookie)")
        if not exit_after_replay:
            echo("The system keeps running; Ctrl-C stops it.")
            runtime.supervise(stop)
    finally:
        echo("stopping…")
        runtime.stop()


async def _enrol_demo_members(sales: Sequence[Sale], member_profile: str, *, consent_share: float = 0.6,
                              seed: str = "crm-demo") -> tuple[int, int]:
    """Enrol every member of the replayed data at member-profile (home store = where they shop most),
    a seeded `consent_share` of them with e-mail and push consent and a seeded birth date; the rest
    enrolled without marketing consent. The data has no enrolments: this stands in for the loyalty desk."""
    import hashlib
    from collections import Counter

    stores: dict[str, Counter[str]] = {}
    for sale in sales:
        if sale.member_id:
            stores.setdefault(sale.member_id, Counter())[sale.store_id] += 1
    consenting = 0

    def draw(member: str, salt: str) -> int:
        return int.from_bytes(hashlib.sha256(f"{seed}/{salt}/{member}".encode()).digest()[:8], "big")

    async with httpx.AsyncClient(base_url=member_profile, headers={"x-api-key": "dev-ops"}, timeout=30) as client:
        semaphore = asyncio.Semaphore(16)

        async def one(member: str, home: str) -> bool:
            agrees = draw(member, "consent") / 2**64 < consent_share
            day = draw(member, "birthday")
            body = {"member_id": member, "home_store": home,
                    "birth_date": f"{1950 + day % 50}-{1 + day // 50 % 12:02d}-{1 + day // 600 % 28:02d}",
                    "consents": [{"channel": c, "granted": agrees, "source": "demo"} for c in ("email", "push")]}
            async with semaphore:
                answer = await client.post("/v1/members", json=body)
            if answer.status_code not in (201, 409):
                raise RuntimeError(f"member-profile refused an enrolment: {answer.status_code} {answer.text}")
            return agrees

        answers = await asyncio.gather(*(one(m, c.most_common(1)[0][0]) for m, c in sorted(stores.items())))
        consenting = sum(answers)
    return len(stores), consenting


def _wait_for_lag_zero(common: CommonSettings, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lags = asyncio.run(_all_lags(common))
        if all(lag == 0 for per in lags.values() for lag in per.values()):
            return
        time.sleep(0.5)


def _print_live_stats(gateway: str) -> None:
    figures = httpx.get(f"{gateway}/v1/stats/live", headers={"x-api-key": "dev-ops"}, timeout=10).json()
    echo(f"\nLive figures, last {figures['window_hours']} h of event time up to {figures['as_of']}:")
    for store in sorted(figures["stores"], key=lambda s: -float(s["revenue"]))[:5]:
        echo(f"  {store['store_id']:<24} {store['sales']:>5} sales  {store['returns']:>4} returns  £{store['revenue']}")
    echo("  top SKUs: " + ", ".join(f"{t['sku']}×{t['quantity']}" for t in figures["top_skus"][:5]))


def _print_segments(segmenter: str) -> None:
    headers = {"x-api-key": "dev-ops"}
    try:
        segments = httpx.get(f"{segmenter}/v1/segments", headers=headers, timeout=10).json()
        rules = httpx.get(f"{segmenter}/v1/rules", headers=headers, timeout=30,
                          params={"min_support": 0.02, "min_confidence": 0.5, "limit": 5}).json()
    except httpx.HTTPError as exc:
        echo(f"\nSegments: the segmenter did not answer ({exc!r})")
        return
    echo(f"\nSegments as of {segments['as_of']}:")
    for dimension in ("value_tier", "persona"):
        sizes = ", ".join(f"{s['id']} {s['size']}" for s in segments["dimensions"].get(dimension, []))
        echo(f"  {dimension:<11} {sizes}")
    echo(f"Top basket rules (chain, {rules['baskets']} baskets, support ≥ 2%, confidence ≥ 50%):")
    for rule in rules["rules"]:
        echo(f"  {' + '.join(rule['antecedents'])} → {rule['consequent']}  "
             f"(support {rule['support']:.3f}, confidence {rule['confidence']:.2f}, lift {rule['lift']:.1f})")


def _print_orders(replenishment: str) -> None:
    try:
        orders = httpx.get(f"{replenishment}/v1/orders", headers={"x-api-key": "dev-ops"}, timeout=10,
                           params={"limit": 1000}).json()["orders"]
    except (httpx.HTTPError, KeyError) as exc:
        echo(f"\nPurchase orders: replenishment did not answer ({exc!r})")
        return
    shown = f"{len(orders):,}" if len(orders) < 1000 else "1,000 or more"
    echo(f"\nPurchase orders raised from sell-through: {shown}")
    for order in orders[:3]:
        echo(f"  {order.get('po_id')}  {order.get('supplier_id')} → {order.get('store_id')}  "
             f"{len(order.get('lines', []))} lines  {order.get('status')}")


def campaign_reports(notifier: str, timeout: float = 10.0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The notifier's campaigns and, in the same order, each one's report (sent, withheld, suppressed
    by reason, uplift), asked with the dev marketing key."""
    headers = {"x-api-key": "dev-marketing"}
    campaigns = httpx.get(f"{notifier}/v1/campaigns", headers=headers, timeout=timeout).json()["campaigns"]
    reports = [httpx.get(f"{notifier}/v1/campaigns/{c['campaign_id']}/report", headers=headers, timeout=timeout).json()
               for c in campaigns]
    return campaigns, reports


def _print_offers(notifier: str) -> None:
    try:
        campaigns, reports = campaign_reports(notifier)
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        echo(f"\nOffers: the notifier did not answer ({exc!r})")
        return
    sent = sum(int(r["sent"]) for r in reports)
    withheld = sum(int(r["withheld"]) for r in reports)
    suppressed: dict[str, int] = {}
    for report in reports:
        for reason, count in report["suppressed"].items():
            suppressed[reason] = suppressed.get(reason, 0) + int(count)
    echo(f"\nOffers ({len(campaigns)} campaigns): {sent:,} sent, {withheld:,} withheld (control group), "
         f"{sum(suppressed.values()):,} suppressed")
    for reason, count in sorted(suppressed.items(), key=lambda kv: (-kv[1], kv[0])):
        echo(f"  suppressed: {reason:<18} {count:>7,}")
    for campaign, report in zip(campaigns, reports, strict=True):
        uplift = "not measurable yet" if report.get("uplift") is None else f"uplift {100 * report['uplift']:+.1f} pts"
        echo(f"  {campaign['campaign_id']:<24} {report['sent']:>6,} sent  {report['withheld']:>5,} withheld  "
             f"{report['suppressed_total']:>7,} suppressed  {uplift}")


def _load_env(state_dir: Path) -> dict[str, Any]:
    path = state_file(state_dir)
    state: dict[str, Any] = orjson.loads(path.read_bytes()) if path.exists() else {"env": {}, "services": {}}
    for var in ENDPOINT_VARS:
        if os.environ.get(var):
            state["env"][var] = os.environ[var]
    return state


@app.command()
def replay(file: Annotated[Path, typer.Argument(help="UCI Online Retail (or Online Retail II) CSV, .gz or plain")],
           via: Annotated[str, typer.Option(help="http: through the gateway; kafka: straight onto the topic")] = "http",
           speed: Annotated[float | None, typer.Option(help="N times faster than the sales happened")] = None,
           as_fast_as_possible: Annotated[bool, typer.Option("--as-fast-as-possible", help="no pacing (default)")] = False,
           gateway: Annotated[str | None, typer.Option(help="gateway URL (default: the one `crm up` runs)")] = None,
           api_key: Annotated[str | None, typer.Option(envvar="CRM_REPLAY_API_KEY", help="ops key for --via http")] = None,
           limit_invoices: Annotated[int | None, typer.Option(help="only the first N invoices")] = None,
           state_dir: Annotated[Path, typer.Option()] = default_state_dir(),
           progress: Annotated[bool, typer.Option(help="show a progress bar")] = True) -> None:
    """Send a file of real sales into the running system, with a progress bar and a summary.

    Reads UCI Online Retail (I or II) or Complete Journey transactions, recognised by the header."""
    from crm_shared.datasets import load_sales_file

    if via not in ("http", "kafka"):
        raise typer.BadParameter("--via must be http or kafka")
    if speed is not None and (as_fast_as_possible or speed <= 0):
        raise typer.BadParameter("--speed takes a positive number and excludes --as-fast-as-possible")
    state = _load_env(state_dir)
    started = time.perf_counter()
    sales, summary = load_sales_file(file)
    if limit_invoices is not None:
        sales = sales[:limit_invoices]
    print_table(f"Loaded {file.name} in {time.perf_counter() - started:.1f} s:", summary.as_table(), echo)
    if via == "http":
        url = gateway or state["services"].get("pos-gateway") or "http://127.0.0.1:8001"
        outcome = asyncio.run(replay_http(sales, gateway_url=url, api_key=api_key, speed=speed, progress=progress))
    else:
        common = CommonSettings(**{k.removeprefix("CRM_").lower(): v for k, v in state["env"].items()})
        outcome = asyncio.run(replay_kafka(sales, bootstrap=common.kafka_bootstrap, topic_prefix=common.topic_prefix,
                                           speed=speed, progress=progress))
    print_table("Replay:", outcome.as_table(), echo)
    for example in outcome.refusal_examples[:3]:
        echo(f"  e.g. {example}")
    if outcome.refused:
        raise typer.Exit(1)


async def _all_lags(common: CommonSettings) -> dict[str, dict[str, int]]:
    lags: dict[str, dict[str, int]] = {}
    for spec in installed_services():
        for group, topics in spec.consumer_groups:
            with contextlib.suppress(Exception):
                lags[common.topic_prefix + group] = await asyncio.wait_for(consumer_lag(
                    common.kafka_bootstrap, common.topic_prefix + group, [common.topic_prefix + t for t in topics]), 15)
    return lags


@app.command()
def status(state_dir: Annotated[Path, typer.Option()] = default_state_dir()) -> None:
    """Each component up or down, and consumer lag per group."""
    state = _load_env(state_dir)
    common = CommonSettings(**{k.removeprefix("CRM_").lower(): v for k, v in state["env"].items()})
    all_up = asyncio.run(_status(common, state["services"]))
    raise typer.Exit(0 if all_up else 1)


async def _status(common: CommonSettings, services: dict[str, str]) -> bool:
    from redis.asyncio import Redis
    from sqlalchemy import text

    from crm_shared.db import make_engine

    results: list[tuple[str, bool, str]] = []
    try:
        await asyncio.wait_for(wait_for_broker(common.kafka_bootstrap, timeout=3), 5)
        results.append(("broker", True, common.kafka_bootstrap))
    except Exception as exc:
        results.append(("broker", False, f"{common.kafka_bootstrap}: {type(exc).__name__}"))
    engine = make_engine(common.database_url, schema="public")
    try:
        async with engine.connect() as conn:
            await asyncio.wait_for(conn.execute(text("SELECT 1")), 5)
        results.append(("postgresql", True, common.database_url.split("@")[-1]))
    except Exception as exc:
        results.append(("postgresql", False, type(exc).__name__))
    finally:
        await engine.dispose()
    redis = Redis.from_url(common.redis_url)
    try:
        await asyncio.wait_for(redis.ping(), 3)
        results.append(("redis", True, common.redis_url))
    except Exception as exc:
        results.append(("redis", False, type(exc).__name__))
    finally:
        await redis.aclose()
    async with httpx.AsyncClient(timeout=3) as client:
        for spec in SERVICES:
            url = services.get(spec.name) or f"http://127.0.0.1:{spec.port}"
            if not spec.installed():
                continue
            try:
                response = await client.get(f"{url}/readyz")
                body = response.json()
                results.append((spec.name, response.status_code == 200,
                                f"{url} " + " ".join(f"{k}={v}" for k, v in body.get("checks", {}).items())))
            except Exception as exc:
                results.append((spec.name, False, f"{url}: {type(exc).__name__}"))
    for name, ok, detail in results:
        echo(f"  {'UP  ' if ok else 'DOWN'}  {name:<16} {detail}")
    broker_up = results[0][1]
    if broker_up:
        lags = await _all_lags(common)
        echo("consumer lag:")
        for group, per_topic in lags.items():
            echo(f"  {group:<36} " + ", ".join(f"{t}={lag}" for t, lag in per_topic.items()))
    return all(ok for _, ok, _ in results)


@app.command()
def republish(since: Annotated[str, typer.Option(help="event time, ISO 8601 with zone, e.g. 2010-12-01T00:00:00+00:00")],
              until: Annotated[str | None, typer.Option(help="event time upper bound (exclusive)")] = None,
              state_dir: Annotated[Path, typer.Option()] = default_state_dir()) -> None:
    """Publish recorded sales again from the gateway's ledger (same event ids: consumers skip repeats).

    Use after the memory-only broker restarted empty, or for a new consumer that needs history."""
    from pos_gateway.__main__ import _republish, aware  # the ledger belongs to the gateway
    from pos_gateway.settings import GatewaySettings

    state = _load_env(state_dir)
    common = CommonSettings(**{k.removeprefix("CRM_").lower(): v for k, v in state["env"].items()})
    queued = asyncio.run(_republish(common, GatewaySettings(), aware(since), aware(until) if until else None))
    echo(f"queued {queued:,} sales; the gateway's outbox relay publishes them")


@catalog_app.command("publish")
def catalog_publish(file: Annotated[Path, typer.Argument(help="completejourney_products.csv.gz")],
                    state_dir: Annotated[Path, typer.Option()] = default_state_dir()) -> None:
    """Publish a product catalog onto the compacted catalog.products.v1 (idempotent), with supplier
    terms generated from a seed where the data has none (see crm_shared.supplier_terms). An Online
    Retail file (no product file exists for it) gives a catalog built from its sales."""
    from crm_shared.supplier_terms import catalog_with_terms, products_from_sales

    state = _load_env(state_dir)
    common = CommonSettings(**{k.removeprefix("CRM_").lower(): v for k, v in state["env"].items()})
    if "online_retail" in file.name:
        from crm_shared.datasets.online_retail import load_sales

        products = products_from_sales(load_sales(file)[0])
    else:
        from crm_shared.datasets.completejourney import load_products

        products = catalog_with_terms(load_products(file))
    published = asyncio.run(publish_catalog(products, bootstrap=common.kafka_bootstrap, topic_prefix=common.topic_prefix))
    echo(f"published {published:,} products to {CATALOG_PRODUCTS.qualified(common.topic_prefix)}")


@topics_app.command("create")
def topics_create() -> None:
    """Create every topic and its .dlq twin (partitions from CRM_TOPIC_PARTITIONS)."""
    common = CommonSettings()
    asyncio.run(wait_for_broker(common.kafka_bootstrap, timeout=60))
    created = asyncio.run(ensure_topics(common.kafka_bootstrap, prefix=common.topic_prefix,
                                        partitions=common.topic_partitions, replication=common.topic_replication))
    echo(f"created {len(created)} topics: {', '.join(created) or '(all existed)'}")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
