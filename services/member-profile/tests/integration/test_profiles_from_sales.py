"""member-profile against the real broker, PostgreSQL and Redis: profiles equal a batch computation
over the same sales, whatever the redeliveries, poison records and crashes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from crm_shared.datasets.online_retail import load_sales
from crm_shared.events import Sale
from crm_shared.processes import ServiceProcess
from crm_shared.replay import replay_kafka
from crm_shared.testing import REPO_ROOT, StackEndpoints, read_topic, start_service
from crm_shared.testing import wait_until_caught_up as caught_up
from crm_shared.topics import POS_SALES

pytestmark = pytest.mark.integration

SLICE = REPO_ROOT / "deploy" / "demo-data" / "online_retail_2010-12.csv.gz"
OPS = {"x-api-key": "dev-ops"}


def batch_figures(sales: list[Sale]) -> dict[str, tuple[int, Decimal, str | None]]:
    """Frequency, monetary (net of returns) and last purchase per member, computed plainly."""
    frequency: dict[str, int] = defaultdict(int)
    monetary: dict[str, Decimal] = defaultdict(Decimal)
    last: dict[str, Any] = {}
    for sale in sales:
        if sale.member_id is None:
            continue
        monetary[sale.member_id] += sale.total
        if sale.kind == "sale":
            frequency[sale.member_id] += 1
            last[sale.member_id] = max(last.get(sale.member_id, sale.occurred_at), sale.occurred_at)
    return {m: (frequency[m], monetary[m], last[m].isoformat() if m in last else None) for m in monetary}


def served_figures(url: str) -> dict[str, tuple[int, Decimal, str | None]]:
    figures: dict[str, tuple[int, Decimal, str | None]] = {}
    offset = 0
    while True:
        page = httpx.get(f"{url}/v1/members", params={"limit": 500, "offset": offset}, headers=OPS, timeout=30).json()
        for m in page["members"]:
            last = m["last_purchase_at"]
            figures[m["member_id"]] = (m["frequency"], Decimal(m["monetary"]),
                                       None if last is None else _iso(last))
        if len(page["members"]) < 500:
            return figures
        offset += 500


def _iso(text: str) -> str:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).isoformat()


def wait_until_caught_up(bootstrap: str, prefix: str, timeout: float = 120) -> None:
    caught_up(bootstrap, f"{prefix}member-profile.sales", POS_SALES.qualified(prefix), timeout)


def start_member_profile(crm_stack: StackEndpoints, tmp: Path, prefix: str, schema: str) -> ServiceProcess:
    return start_service("member_profile", crm_stack, tmp, prefix=prefix,
                         extra_env={"MEMBER_PROFILE_SCHEMA_NAME": schema, "MEMBER_PROFILE_CONSUMER_BATCH": "300"})


@pytest.fixture(scope="module")
def slice_sales() -> list[Sale]:
    return load_sales(SLICE)[0]


def test_profiles_equal_the_batch_computation_and_a_second_delivery_changes_nothing(
        crm_stack: StackEndpoints, tmp_path: Path, slice_sales: list[Sale]) -> None:
    prefix, schema = f"mp{uuid.uuid4().hex[:6]}.", f"member_profile_{uuid.uuid4().hex[:8]}"
    service = start_member_profile(crm_stack, tmp_path, prefix, schema)
    try:
        asyncio.run(replay_kafka(slice_sales, bootstrap=crm_stack.kafka_bootstrap, topic_prefix=prefix, progress=False))
        wait_until_caught_up(crm_stack.kafka_bootstrap, prefix)
        expected = batch_figures(slice_sales)
        served = served_figures(service.url)
        assert len(expected) == 948
        assert served == expected

        profile = httpx.get(f"{service.url}/v1/members/12748/profile", headers=OPS).json()
        assert profile["as_of"].startswith("2010-12-23T17:41")
        assert profile["preferred_store"] == "or-united-kingdom"
        assert profile["visit_rhythm"]["intervals"] >= 5
        history = httpx.get(f"{service.url}/v1/members/12748/history", params={"limit": 3}, headers=OPS).json()
        times = [p["occurred_at"] for p in history["purchases"]]
        assert len(times) == 3 and times == sorted(times, reverse=True)

        # The whole topic delivered again (a replay, a rebalance, a republish): nothing counted twice.
        asyncio.run(replay_kafka(slice_sales, bootstrap=crm_stack.kafka_bootstrap, topic_prefix=prefix, progress=False))
        wait_until_caught_up(crm_stack.kafka_bootstrap, prefix)
        assert served_figures(service.url) == expected
        metrics = httpx.get(f"{service.url}/metrics").text
        skipped = [line for line in metrics.splitlines()
                   if line.startswith("crm_consumer_events_duplicate_total") and prefix in line]
        assert skipped and float(skipped[0].split()[-1]) == len(slice_sales)
    finally:
        service.stop()


def test_killed_mid_batch_and_restarted_gives_the_same_profiles(crm_stack: StackEndpoints, tmp_path: Path,
                                                              slice_sales: list[Sale]) -> None:
    prefix, schema = f"mk{uuid.uuid4().hex[:6]}.", f"member_profile_{uuid.uuid4().hex[:8]}"
    asyncio.run(replay_kafka(slice_sales, bootstrap=crm_stack.kafka_bootstrap, topic_prefix=prefix, progress=False))
    service = start_member_profile(crm_stack, tmp_path, prefix, schema)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # kill it once it has applied some but not all
        metrics = httpx.get(f"{service.url}/metrics").text
        applied = [float(line.split()[-1]) for line in metrics.splitlines()
                   if line.startswith("crm_consumer_events_applied_total") and prefix in line]
        if applied and applied[0] > 0:
            break
        time.sleep(0.05)
    service.kill()
    assert applied and 0 < applied[0] < len(slice_sales), f"killed at {applied}: the drill needs a partial state"
    restarted = start_member_profile(crm_stack, tmp_path, prefix, schema)
    try:
        wait_until_caught_up(crm_stack.kafka_bootstrap, prefix)
        assert served_figures(restarted.url) == batch_figures(slice_sales)
    finally:
        restarted.stop()


def test_a_poison_record_goes_to_the_dead_letter_topic_and_the_consumer_goes_on(
        crm_stack: StackEndpoints, tmp_path: Path, slice_sales: list[Sale]) -> None:
    from aiokafka import AIOKafkaProducer

    prefix, schema = f"mz{uuid.uuid4().hex[:6]}.", f"member_profile_{uuid.uuid4().hex[:8]}"
    service = start_member_profile(crm_stack, tmp_path, prefix, schema)
    topic = POS_SALES.qualified(prefix)

    async def inject() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=crm_stack.kafka_bootstrap)
        await producer.start()
        await producer.send_and_wait(topic, b"\xff\xfe not json", key=b"17850")
        await producer.send_and_wait(topic, orjson.dumps({"event_id": str(uuid.uuid4()), "payload": {}}), key=b"17850")
        await producer.stop()

    try:
        asyncio.run(inject())
        one_member = [s for s in slice_sales if s.member_id == "17850"]
        asyncio.run(replay_kafka(one_member, bootstrap=crm_stack.kafka_bootstrap, topic_prefix=prefix, progress=False))
        wait_until_caught_up(crm_stack.kafka_bootstrap, prefix)
        dead = asyncio.run(read_topic(crm_stack.kafka_bootstrap, POS_SALES.dlq(prefix), expected=2))
        reasons = sorted(dict(r.headers)["dlq.reason"].decode() for r in dead)
        assert len(dead) == 2 and reasons[0].startswith("breaks the contract") and reasons[1].startswith("not valid JSON")
        profile = httpx.get(f"{service.url}/v1/members/17850/profile", headers=OPS).json()
        assert profile["frequency"] == batch_figures(one_member)["17850"][0]
        assert httpx.get(f"{service.url}/v1/members/17850/profile").status_code == 401
        assert httpx.get(f"{service.url}/v1/members/17850/profile", headers={"x-api-key": "dev-pos-s1"}).status_code == 403
        assert httpx.get(f"{service.url}/v1/members/nobody/profile", headers=OPS).status_code == 404
    finally:
        service.stop()


def test_a_late_visit_rebuilds_the_rhythm_on_the_tills_calendar_day(crm_stack: StackEndpoints, tmp_path: Path) -> None:
    """00:30 British Summer Time is 23:30 UTC the day before: the rhythm must count the till's day."""
    from datetime import datetime, timedelta, timezone

    bst = timezone(timedelta(hours=1))

    def visit(sale_id: str, when: datetime) -> Sale:
        return Sale.model_validate({"sale_id": sale_id, "store_id": "s1", "terminal_id": "t1", "member_id": "night-owl",
                                    "occurred_at": when.isoformat(), "currency": "GBP",
                                    "lines": [{"sku": "A", "quantity": 1, "unit_price": "1.00"}]})

    in_order = [visit("1", datetime(2011, 6, 1, 0, 30, tzinfo=bst)), visit("3", datetime(2011, 6, 11, 0, 30, tzinfo=bst))]
    late = visit("2", datetime(2011, 6, 5, 0, 30, tzinfo=bst))  # arrives after the 11 June visit
    prefix, schema = f"mr{uuid.uuid4().hex[:6]}.", f"member_profile_{uuid.uuid4().hex[:8]}"
    service = start_member_profile(crm_stack, tmp_path, prefix, schema)
    try:
        asyncio.run(replay_kafka(in_order, bootstrap=crm_stack.kafka_bootstrap, topic_prefix=prefix, progress=False))
        wait_until_caught_up(crm_stack.kafka_bootstrap, prefix)
        asyncio.run(replay_kafka([late], bootstrap=crm_stack.kafka_bootstrap, topic_prefix=prefix, progress=False))
        wait_until_caught_up(crm_stack.kafka_bootstrap, prefix)
        rhythm = httpx.get(f"{service.url}/v1/members/night-owl/profile", headers=OPS).json()["visit_rhythm"]
        assert rhythm["intervals"] == 2 and rhythm["mean_days"] == 5.0  # 1 → 5 → 11 June, on the till's calendar
    finally:
        service.stop()
