"""Where a consumer batch ends changes no offer the notifier makes.

The same real sales, on one partition, read by two notifier processes: one fetching 3 records at a
time, one 1,000. Birthdays (every member has one in December), after-sale care (the five commonest
categories, two days later) and run-out reminders (a product bought twice sets a rhythm) are dated
at the clock reading that reached them, not at the end of whatever batch held it; redemptions are
walked in topic order. Some sales arrive days late (later than the care's delay), so a batch may
hold only late sales: the clock goes on from where the earlier batches left it. Both must hold the same
offers (ids, texts, windows, control sides, redemptions) and count the same suppressions: what a
notifier killed and restarted mid-replay relies on.
"""

from __future__ import annotations

import asyncio
import uuid
import zlib
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from crm_shared.datasets.online_retail import category_of_description, load_sales
from crm_shared.events import MemberContactability, Product, Sale, contactability_event, product_listed
from crm_shared.kafka import make_producer
from crm_shared.processes import ServiceProcess
from crm_shared.replay import replay_kafka
from crm_shared.serde import encode, encode_key
from crm_shared.system import Snapshot, read_snapshot
from crm_shared.testing import REPO_ROOT, StackEndpoints, start_service, wait_until_caught_up
from crm_shared.topics import CATALOG_PRODUCTS, MEMBER_CONSENTS, POS_SALES

pytestmark = pytest.mark.integration

SLICE = REPO_ROOT / "deploy" / "demo-data" / "online_retail_2010-12.csv.gz"
SALES = 1_500
MARKETING = {"x-api-key": "dev-marketing"}
LISTED_AT = datetime(2010, 11, 30, tzinfo=UTC)
TABLES = ["notifier.offers", "notifier.suppressions"]


def birthday(member: str) -> str:
    return f"12-{zlib.crc32(member.encode()) % 28 + 1:02d}"


async def publish_facts(bootstrap: str, prefix: str, sales: list[Sale]) -> None:
    products = {line.sku: category_of_description(line.description or "") for sale in sales for line in sale.lines}
    members = sorted({sale.member_id for sale in sales if sale.member_id})
    producer = make_producer(bootstrap, client_id="batch-cuts")
    await producer.start()
    try:
        for sku, kind in sorted(products.items()):
            event = product_listed(Product(sku=sku, category=kind), source="test", occurred_at=LISTED_AT)
            await producer.send(CATALOG_PRODUCTS.qualified(prefix), encode(event), key=encode_key(event.key))
        for member in members:
            event = contactability_event(MemberContactability(
                member_id=member, as_of=LISTED_AT, enrolled=True, home_store="web", birthday=birthday(member),
                consents={"push": True, "email": True}))
            await producer.send(MEMBER_CONSENTS.qualified(prefix), encode(event), key=encode_key(event.key))
        await producer.flush()
    finally:
        await producer.stop()


def run(crm_stack: StackEndpoints, tmp: Path, sales: list[Sale], batch: int) -> tuple[str, ServiceProcess]:
    prefix, schema = f"nc{uuid.uuid4().hex[:6]}.", f"notifier_{uuid.uuid4().hex[:8]}"
    service = start_service("notifier", crm_stack, tmp, prefix=prefix, partitions=1, extra_env={
        "NOTIFIER_SCHEMA_NAME": schema, "NOTIFIER_CONSUMER_BATCH": str(batch), "NOTIFIER_CAMPAIGN_CACHE_SECONDS": "0",
        "NOTIFIER_TRIGGERS": "run_out,birthday,after_sale", "NOTIFIER_RUN_OUT_MIN_PURCHASES": "2"})
    common = Counter(category_of_description(line.description or "") for sale in sales for line in sale.lines)
    care = {"name": "Care", "trigger": "after_sale", "channel": "push", "delay_days": 2, "control_share": 0.1,
            "categories": [name for name, _ in common.most_common(5) if name],
            "template": "How is your {product}? {discount}% off your next one until {valid_to}."}
    assert httpx.put(f"{service.url}/v1/campaigns/care", json=care, headers=MARKETING, timeout=10).status_code == 201
    assert httpx.post(f"{service.url}/v1/campaigns/care/start", headers=MARKETING, timeout=10).status_code == 200
    asyncio.run(publish_facts(crm_stack.kafka_bootstrap, prefix, sales))
    for part, topic in (("catalog", CATALOG_PRODUCTS), ("consents", MEMBER_CONSENTS)):
        wait_until_caught_up(crm_stack.kafka_bootstrap, f"{prefix}notifier.{part}", topic.qualified(prefix))
    asyncio.run(replay_kafka(sales, bootstrap=crm_stack.kafka_bootstrap, topic_prefix=prefix, progress=False))
    wait_until_caught_up(crm_stack.kafka_bootstrap, f"{prefix}notifier.sales", POS_SALES.qualified(prefix),
                         timeout=300)
    return schema, service


def with_late_sales(sales: list[Sale]) -> list[Sale]:
    """Every 40th of the first half moved to the end, in a run of its own: read days after its time."""
    late = [sale for i, sale in enumerate(sales) if i % 40 == 0 and i < len(sales) // 2]
    return [sale for i, sale in enumerate(sales) if not (i % 40 == 0 and i < len(sales) // 2)] + late


def snapshot(crm_stack: StackEndpoints, schema: str) -> Snapshot:
    return asyncio.run(read_snapshot(crm_stack.database_url, {"notifier": schema}))


def test_batches_of_3_and_of_1000_make_the_same_offers(crm_stack: StackEndpoints, tmp_path: Path) -> None:
    sales = with_late_sales(load_sales(SLICE)[0][:SALES])
    assert sales[-1].occurred_at < max(s.occurred_at for s in sales) - timedelta(days=2), "no sale is late"
    big_schema, big = run(crm_stack, tmp_path, sales, 1_000)
    small_schema, small = run(crm_stack, tmp_path, sales, 3)
    try:
        big_state, small_state = snapshot(crm_stack, big_schema), snapshot(crm_stack, small_schema)
    finally:
        big.stop()
        small.stop()
    offers = big_state.records("notifier.offers")
    triggers = Counter(o["trigger"] for o in offers)
    # The check must exercise what batches used to change: each trigger dated by the clock, and redemptions.
    assert triggers["birthday"] > 50 and triggers["after_sale"] > 50 and triggers["run_out"] > 5, triggers
    assert sum(1 for o in offers if o["redeemed_by"]) > 20, "too few redemptions to prove they are batch-proof"
    assert any(o["withheld"] for o in offers) and big_state.rows("notifier.suppressions") > 0
    assert small_state.describe(big_state, TABLES) == "identical"
