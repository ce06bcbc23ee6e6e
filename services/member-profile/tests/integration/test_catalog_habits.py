"""Category and brand habits from the product catalog, on real Complete Journey data."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
from crm_shared.datasets.completejourney import load_products, load_transactions
from crm_shared.kafka import consumer_lag
from crm_shared.replay import publish_catalog, replay_kafka
from crm_shared.testing import StackEndpoints, dataset, start_service
from crm_shared.topics import CATALOG_PRODUCTS, POS_SALES

pytestmark = pytest.mark.integration


def caught_up(bootstrap: str, group: str, topic: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while asyncio.run(consumer_lag(bootstrap, group, [topic])).get(topic) != 0:
        assert time.monotonic() < deadline, f"{group} did not catch up"
        time.sleep(0.3)


def test_a_households_categories_and_private_label_share_come_from_the_catalog(
        crm_stack: StackEndpoints, tmp_path: Path) -> None:
    sales, _ = load_transactions(dataset("completejourney_transactions_sample.csv.gz"))
    busiest = Counter(s.member_id for s in sales).most_common(1)[0][0]
    theirs = [s for s in sales if s.member_id == busiest]
    skus = {line.sku for s in theirs for line in s.lines}
    catalog = [p for p in load_products(dataset("completejourney_products.csv.gz")) if p.sku in skus]

    by_sku = {p.sku: p for p in catalog}
    doubled = "GROCERY / SOFT DRINKS"  # double points on soft drinks, from settings
    prefix = f"mc{uuid.uuid4().hex[:6]}."
    service = start_service("member_profile", crm_stack, tmp_path, prefix=prefix,
                            extra_env={"MEMBER_PROFILE_SCHEMA_NAME": f"member_profile_{uuid.uuid4().hex[:8]}",
                                       "MEMBER_PROFILE_CATEGORY_MULTIPLIERS": f'{{"{doubled}": "2"}}'})
    try:
        asyncio.run(publish_catalog(catalog, bootstrap=crm_stack.kafka_bootstrap, topic_prefix=prefix, progress=False))
        caught_up(crm_stack.kafka_bootstrap, f"{prefix}member-profile.catalog", CATALOG_PRODUCTS.qualified(prefix))
        asyncio.run(replay_kafka(theirs, bootstrap=crm_stack.kafka_bootstrap, topic_prefix=prefix, progress=False))
        caught_up(crm_stack.kafka_bootstrap, f"{prefix}member-profile.sales", POS_SALES.qualified(prefix))
        profile = httpx.get(f"{service.url}/v1/members/{busiest}/profile", headers={"x-api-key": "dev-ops"}).json()
    finally:
        service.stop()

    items: Counter[str] = Counter()
    brands: Counter[str] = Counter()
    for sale in theirs:
        for line in sale.lines:
            product = by_sku.get(line.sku)
            if product is None:
                continue
            label = " / ".join(filter(None, (product.department, product.category)))
            if label:
                items[label] += line.quantity
            if product.brand:
                brands[product.brand] += line.quantity
    top = items.most_common(1)[0]
    assert next(iter(profile["categories"])) == top[0]
    assert profile["categories"][top[0]] == round(top[1] / sum(items.values()), 4)
    assert profile["brands"].get("Private", 0.0) == round(brands["Private"] / sum(brands.values()), 4)
    assert profile["frequency"] == len(theirs)

    def label(sku: str) -> str:
        product = by_sku.get(sku)
        return " / ".join(filter(None, (product.department, product.category))) if product else ""

    expected_points = sum(int(sum(line.net * (2 if label(line.sku) == doubled else 1) for line in sale.lines))
                          for sale in theirs)
    assert any(label(line.sku) == doubled for sale in theirs for line in sale.lines), "pick a household that buys it"
    assert profile["points_balance"] == expected_points
    assert profile["monetary"] == str(sum(s.total for s in theirs))
