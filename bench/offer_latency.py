"""Sale → cross-sell offer latency on the embedded stack, at a steady sale rate.

    .venv/bin/python bench/offer_latency.py [--rate 1000] [--seconds 20] [--members 2000] [--rules 40]

The issue's target: sale → cross-sell offer on `marketing.offers.v1`, p99 < 250 ms at 1,000 sales/s.

One run:
1. the embedded broker, PostgreSQL and Redis; `python -m member_profile` (its API only: it is where
   members enrol and give consent) and `python -m notifier` (cross-sell trigger only; caps raised so
   that the guard being timed is the whole chain, not the cap), each on its own topic prefix and schema;
2. `--members` members enrolled in member-profile with push consent (member-profile publishes each on
   `member.consents.v1`; the run starts once the notifier has them all); `--rules` chain-wide basket
   rules `a<i> -> b<i>` published on `analytics.associations.v1`;
3. sales at `--rate` per second for `--seconds`, each by a random member with a random `a<i>` in
   the basket, event time = the moment it is produced;
4. every offer read back from `marketing.offers.v1`: latency = the record's publish timestamp
   (set by the notifier's outbox relay when it sends) minus the offer's `valid_from` (the sale's
   event time). Consent is read from the notifier's own table (fed by `member.consents.v1`), so first
   contacts cost the same as later ones; `--warm` lets every member shop once first anyway.

Prints the percentiles beside the target and saves `bench/results/offer_latency.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "offer_latency.json"
TARGET_P99_MS = 250.0


async def enrol(url: str, members: list[str]) -> None:
    async with httpx.AsyncClient(base_url=url, headers={"x-api-key": "dev-ops"}, timeout=30) as client:
        semaphore = asyncio.Semaphore(16)

        async def one(member: str) -> None:
            async with semaphore:
                answer = await client.post("/v1/members", json={
                    "member_id": member, "home_store": "s1",
                    "consents": [{"channel": "push", "granted": True, "source": "s1"}]})
                if answer.status_code != 201:
                    raise RuntimeError(f"enrolment refused: {answer.status_code} {answer.text}")

        await asyncio.gather(*(one(m) for m in members))


async def publish_rules(bootstrap: str, prefix: str, rules: int) -> None:
    from crm_shared.events import AssociationRulesChanged, RuleDocument, segmenter_event
    from crm_shared.kafka import make_producer
    from crm_shared.serde import encode
    from crm_shared.topics import ANALYTICS_ASSOCIATIONS

    now = datetime.now(UTC)
    document = AssociationRulesChanged(scope="chain", window_start=None, window_end=now, baskets=100_000,
                                       min_support=0.001, min_confidence=0.3, rules=[
                                           RuleDocument(antecedents=[f"{a}{i}"], consequent=f"{b}{i}", support=0.01,
                                                        confidence=0.5, lift=2.0)
                                           for i in range(rules) for a, b in (("w", "x"), ("a", "b"))])
    event = segmenter_event(document, event_type="AssociationRulesChanged", key="chain", occurred_at=now,
                            identity=f"bench-rules/{prefix}")
    producer = make_producer(bootstrap, client_id="bench-rules")
    await producer.start()
    try:
        await producer.send_and_wait(ANALYTICS_ASSOCIATIONS.qualified(prefix), encode(event), key=b"chain")
    finally:
        await producer.stop()


async def produce_sales(bootstrap: str, prefix: str, members: list[str], rules: int, rate: float,
                        seconds: float, *, family: str = "a", in_turn: bool = False) -> tuple[int, float]:
    """Sales at `rate`/s, each with one antecedent `<family><i>`: random members, or each member in turn."""
    from crm_shared.events import Sale, SaleLine, sale_recorded
    from crm_shared.kafka import make_producer
    from crm_shared.serde import encode
    from crm_shared.topics import POS_SALES

    producer = make_producer(bootstrap, client_id="bench-sales")
    await producer.start()
    topic = POS_SALES.qualified(prefix)
    rng = random.Random(7)
    sent = 0
    tick = 0.01
    started = time.perf_counter()
    try:
        while (elapsed := time.perf_counter() - started) < seconds:
            due = int(elapsed * rate) + 1
            while sent < due:
                sent += 1
                member = members[(sent - 1) % len(members)] if in_turn else rng.choice(members)
                sale = Sale(sale_id=f"{family}{sent}", store_id="s1", terminal_id="t1", member_id=member,
                            occurred_at=datetime.now(UTC), currency="EUR",
                            lines=[SaleLine(sku=f"{family}{rng.randrange(rules)}", quantity=1, unit_price=Decimal("2.50")),
                                   SaleLine(sku="bag", quantity=1, unit_price=Decimal("0.10"))])
                event = sale_recorded(sale, source="bench")
                await producer.send(topic, encode(event), key=event.key.encode())
            await asyncio.sleep(tick)
        await producer.flush()
    finally:
        await producer.stop()
    return sent, time.perf_counter() - started


async def read_offers(bootstrap: str, topic: str, quiet_for: float = 10.0,
                      timeout: float = 180.0) -> list[tuple[int, dict[str, Any]]]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        while not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[tuple[int, dict[str, Any]]] = []
        deadline, last_new = time.monotonic() + timeout, time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - last_new < quiet_for:
            batch = await consumer.getmany(timeout_ms=300, max_records=10_000)
            for part in batch.values():
                for record in part:
                    out.append((record.timestamp, orjson.loads(record.value)))
                    last_new = time.monotonic()
        return out
    finally:
        await consumer.stop()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--rules", type=int, default=40)
    parser.add_argument("--warm", action=argparse.BooleanOptionalAction, default=False,
                        help="let every member shop once before the timed run")
    args = parser.parse_args()

    from crm_shared.kafka import consumer_lag
    from crm_shared.testing import StackEndpoints, start_service
    from crm_shared.topics import ANALYTICS_ASSOCIATIONS, MARKETING_OFFERS, POS_SALES

    work = Path(tempfile.mkdtemp(prefix="bench-offers-"))
    from crm_shared.embedded import EmbeddedStack

    stack = EmbeddedStack.create(work / "stack")
    print(f"starting the embedded stack in {stack.state_dir} ...", flush=True)
    stack.start()
    prefix = f"ol{uuid.uuid4().hex[:6]}."
    endpoints = StackEndpoints(stack.kafka.bootstrap, stack.postgres.url, stack.redis.url, stack)
    profile = notifier = None
    try:
        profile = start_service("member_profile", endpoints, work, prefix=prefix, extra_env={
            "MEMBER_PROFILE_CONSUMER_ENABLED": "false", "MEMBER_PROFILE_SCHEMA_NAME": f"mp_{uuid.uuid4().hex[:8]}"})
        notifier = start_service("notifier", endpoints, work, prefix=prefix, extra_env={
            "NOTIFIER_SCHEMA_NAME": f"nt_{uuid.uuid4().hex[:8]}",
            "NOTIFIER_TRIGGERS": "cross_sell", "NOTIFIER_DAILY_CAP": "100000", "NOTIFIER_WEEKLY_CAP": "100000",
            "NOTIFIER_QUIET_START_HOUR": "0", "NOTIFIER_QUIET_END_HOUR": "0"})
        members = [f"bm{i:05d}" for i in range(args.members)]
        started = time.perf_counter()
        asyncio.run(enrol(profile.url, members))
        print(f"enrolled {len(members):,} members with push consent in {time.perf_counter() - started:.1f} s", flush=True)
        from crm_shared.testing import read_topic
        from crm_shared.topics import MEMBER_CONSENTS

        consents_topic = MEMBER_CONSENTS.qualified(prefix)
        asyncio.run(read_topic(endpoints.kafka_bootstrap, consents_topic, expected=len(members), timeout=120, settle=0.1))
        while asyncio.run(consumer_lag(endpoints.kafka_bootstrap, f"{prefix}notifier.consents",
                                       [consents_topic])).get(consents_topic) != 0:
            time.sleep(0.2)
        print(f"the notifier holds their consents after {time.perf_counter() - started:.1f} s", flush=True)
        asyncio.run(publish_rules(endpoints.kafka_bootstrap, prefix, args.rules))
        rules_topic = ANALYTICS_ASSOCIATIONS.qualified(prefix)
        group = f"{prefix}notifier.rules"
        while asyncio.run(consumer_lag(endpoints.kafka_bootstrap, group, [rules_topic])).get(rules_topic) != 0:
            time.sleep(0.2)
        time.sleep(1.0)
        if args.warm:
            # Every member shops once first (rules w<i> -> x<i>), so their consent is in the notifier's cache
            # and the measured run times the steady state; `--no-warm` times first contacts too.
            print(f"warm-up: each of {len(members):,} members shops once at 200 sales/s ...", flush=True)
            asyncio.run(produce_sales(endpoints.kafka_bootstrap, prefix, members, args.rules, 200.0, len(members) / 200.0,
                                      family="w", in_turn=True))
            sales_topic = POS_SALES.qualified(prefix)
            while asyncio.run(consumer_lag(endpoints.kafka_bootstrap, f"{prefix}notifier.sales",
                                           [sales_topic])).get(sales_topic) != 0:
                time.sleep(0.5)
            time.sleep(2.0)
        print(f"producing {args.rate:,.0f} sales/s for {args.seconds:.0f} s ...", flush=True)
        sent, took = asyncio.run(produce_sales(endpoints.kafka_bootstrap, prefix, members, args.rules, args.rate,
                                               args.seconds))
        offers = asyncio.run(read_offers(endpoints.kafka_bootstrap, MARKETING_OFFERS.qualified(prefix)))
        report = httpx.get(f"{notifier.url}/v1/campaigns/auto-cross-sell/report",
                           headers={"x-api-key": "dev-marketing"}, timeout=30).json()
    finally:
        for process in (notifier, profile):
            if process is not None:
                process.stop()
        stack.discard()  # and its data (CRM_KEEP_STACK_STATE=1 keeps it)

    offers = [(ms, e) for ms, e in offers if e["payload"]["products"][0].startswith("b")]  # the timed run's
    latencies = []
    for published_ms, event in offers:
        event_ms = datetime.fromisoformat(event["payload"]["valid_from"]).timestamp() * 1000
        latencies.append(published_ms - event_ms)
    if not latencies:
        print("no offers came out", file=sys.stderr)
        return 1
    p50, p95, p99 = (percentile(latencies, q) for q in (0.5, 0.95, 0.99))
    result = {
        "run_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "target": {"rate_per_s": 1000, "p99_ms": TARGET_P99_MS},
        "sales": sent, "seconds": round(took, 2), "achieved_rate_per_s": round(sent / took, 1),
        "offers": len(offers), "withheld": sum(1 for _, e in offers if e["payload"]["withheld"]),
        "suppressed_whole_run": report["suppressed"], "members": args.members, "rules": args.rules,
        "consent": "member.consents.v1 → the notifier's table" + (" (every member shopped once before)" if args.warm else ""),
        "latency_ms": {"p50": round(p50, 1), "p95": round(p95, 1), "p99": round(p99, 1),
                       "max": round(max(latencies), 1), "mean": round(statistics.fmean(latencies), 1)},
        "pass": p99 < TARGET_P99_MS and sent / took >= 0.95 * 1000,  # the target is at 1,000 sales/s
    }
    RESULTS.parent.mkdir(exist_ok=True)
    runs = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    runs[f"{'warm' if args.warm else 'first'}_{args.rate:.0f}_per_s"] = result  # one entry per kind of run
    RESULTS.write_text(json.dumps(runs, indent=2) + "\n")
    print(f"\nsales produced      {sent:,} in {took:.1f} s = {sent / took:,.0f}/s   (target rate 1,000/s)")
    print(f"offers published    {len(offers):,} ({result['withheld']:,} withheld for control); "
          f"suppressed (whole run) {report['suppressed']}; consent from {result['consent']}")
    print(f"sale -> offer       p50 {p50:,.0f} ms   p95 {p95:,.0f} ms   p99 {p99:,.0f} ms   max {max(latencies):,.0f} ms")
    print(f"target              p99 < {TARGET_P99_MS:.0f} ms at 1,000 sales/s: {'PASS' if result['pass'] else 'FAIL'}")
    print(f"saved {RESULTS.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
