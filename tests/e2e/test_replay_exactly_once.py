"""`crm replay` puts every Online Retail invoice on pos.sales.v1 exactly once, and running it
again changes nothing downstream."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import orjson
import pytest
from crm_shared.datasets.online_retail import load_sales
from crm_shared.replay import replay_http, replay_kafka
from crm_shared.testing import REPO_ROOT, StackEndpoints, dataset, read_topic, start_service
from crm_shared.topics import POS_SALES

pytestmark = pytest.mark.e2e

DEMO_SLICE = REPO_ROOT / "deploy" / "demo-data" / "online_retail_2010-12.csv.gz"


def replay_twice_and_check(crm_stack: StackEndpoints, tmp_path: Path, source: Path) -> None:
    sales, summary = load_sales(source)
    prefix = f"e2e{uuid.uuid4().hex[:6]}."
    gateway = start_service("pos_gateway", crm_stack, tmp_path, prefix=prefix,
                            extra_env={"POS_GATEWAY_SCHEMA_NAME": f"pos_gateway_{uuid.uuid4().hex[:8]}"})
    try:
        first = asyncio.run(replay_http(sales, gateway_url=gateway.url, api_key=None, speed=None, progress=False))
        assert (first.accepted, first.duplicates, sum(first.refused.values())) == (len(sales), 0, 0)
        topic = POS_SALES.qualified(prefix)
        records = asyncio.run(read_topic(crm_stack.kafka_bootstrap, topic, expected=len(sales), timeout=120, settle=2))
        events = [orjson.loads(r.value) for r in records]
        per_invoice = Counter(e["payload"]["sale_id"] for e in events)
        assert set(per_invoice) == {s.sale_id for s in sales}
        assert max(per_invoice.values()) == 1, "no invoice published twice"
        assert sum(len(e["payload"]["lines"]) for e in events) == summary.lines
        assert sum(1 for e in events if e["payload"]["kind"] == "return") == summary.returns

        second = asyncio.run(replay_http(sales, gateway_url=gateway.url, api_key=None, speed=None, progress=False))
        assert (second.accepted, second.duplicates) == (0, len(sales))
        time.sleep(1.5)  # a second publish, if there were one, would have happened by now
        again = asyncio.run(read_topic(crm_stack.kafka_bootstrap, topic, expected=len(sales), timeout=60, settle=1))
        assert len(again) == len(sales)
    finally:
        gateway.stop()


def test_demo_slice_replayed_over_http_lands_once(crm_stack: StackEndpoints, tmp_path: Path) -> None:
    replay_twice_and_check(crm_stack, tmp_path, DEMO_SLICE)


def test_full_online_retail_replayed_over_http_lands_once(crm_stack: StackEndpoints, tmp_path: Path) -> None:
    replay_twice_and_check(crm_stack, tmp_path, dataset("online_retail.csv.gz"))


def test_kafka_bulk_replay_twice_leaves_live_figures_unchanged(crm_stack: StackEndpoints, tmp_path: Path) -> None:
    sales, _ = load_sales(DEMO_SLICE)
    prefix = f"e2k{uuid.uuid4().hex[:6]}."
    gateway = start_service("pos_gateway", crm_stack, tmp_path, prefix=prefix,
                            extra_env={"POS_GATEWAY_SCHEMA_NAME": f"pos_gateway_{uuid.uuid4().hex[:8]}"})
    try:
        first = asyncio.run(replay_kafka(sales, bootstrap=crm_stack.kafka_bootstrap, topic_prefix=prefix, progress=False))
        assert first.accepted == len(sales)
        expected_uk = sum(1 for s in sales if s.store_id == "or-united-kingdom" and s.kind == "sale"
                          and s.occurred_at.date().isoformat() == "2010-12-23")

        def uk_figures() -> dict:
            body = httpx.get(f"{gateway.url}/v1/stats/live", params={"store_id": "or-united-kingdom"},
                             headers={"x-api-key": "dev-ops"}).json()
            return body["stores"][0] if body["stores"] else {}

        deadline = time.monotonic() + 120
        while uk_figures().get("sales", 0) < expected_uk and time.monotonic() < deadline:
            time.sleep(0.5)
        settled = uk_figures()
        # The 24 h window ends at the last event: 23 Dec 2010 (no UK sale falls after 18:00 on the 22nd).
        assert settled["sales"] == expected_uk, (settled, gateway.tail())
        asyncio.run(replay_kafka(sales, bootstrap=crm_stack.kafka_bootstrap, topic_prefix=prefix, progress=False))
        time.sleep(4)
        assert uk_figures() == settled
    finally:
        gateway.stop()
