"""Where a consumer batch ends changes nothing member-profile writes or publishes.

The same real sales, on one partition, consumed by two member-profile processes: one fetching 3 records
at a time, one 1,000. A week's tier window, points that live 5 days and low thresholds make tiers move
up at sales and down at the midnight reviews, and points lapse, many times over the slice. Both must
publish the same profile updates and tier changes, in the same order under the same event ids, and
hold the same profiles, points and tiers: what a service killed and restarted mid-replay relies on.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from crm_shared.datasets.online_retail import load_sales
from crm_shared.events import Sale
from crm_shared.processes import ServiceProcess
from crm_shared.replay import replay_kafka
from crm_shared.system import read_snapshot
from crm_shared.testing import REPO_ROOT, StackEndpoints, read_topic, start_service, wait_until_caught_up
from crm_shared.topics import MEMBER_PROFILES, MEMBER_TIER_CHANGED, POS_SALES

pytestmark = pytest.mark.integration

SLICE = REPO_ROOT / "deploy" / "demo-data" / "online_retail_2010-12.csv.gz"
SALES = 1_500
LOYALTY = {"MEMBER_PROFILE_TIER_WINDOW_DAYS": "7", "MEMBER_PROFILE_POINTS_EXPIRY_DAYS": "5",
           "MEMBER_PROFILE_TIER_SILVER": "100", "MEMBER_PROFILE_TIER_GOLD": "400", "MEMBER_PROFILE_TIER_VIP": "1500",
           "MEMBER_PROFILE_RELAY_IDLE_POLL_SECONDS": "0.05"}


def run(crm_stack: StackEndpoints, tmp: Path, sales: list[Sale], batch: int) -> tuple[str, str, ServiceProcess]:
    prefix, schema = f"mc{uuid.uuid4().hex[:6]}.", f"member_profile_{uuid.uuid4().hex[:8]}"
    service = start_service("member_profile", crm_stack, tmp, prefix=prefix, partitions=1,
                            extra_env={**LOYALTY, "MEMBER_PROFILE_SCHEMA_NAME": schema,
                                       "MEMBER_PROFILE_CONSUMER_BATCH": str(batch)})
    asyncio.run(replay_kafka(sales, bootstrap=crm_stack.kafka_bootstrap, topic_prefix=prefix, progress=False))
    wait_until_caught_up(crm_stack.kafka_bootstrap, f"{prefix}member-profile.sales", POS_SALES.qualified(prefix),
                         timeout=300)
    return prefix, schema, service


def published(crm_stack: StackEndpoints, topic: str, expected: int) -> list[tuple[Any, ...]]:
    records = asyncio.run(read_topic(crm_stack.kafka_bootstrap, topic, expected=expected, timeout=60, settle=2))
    out = []
    for record in records:
        event = orjson.loads(record.value)
        out.append((record.key, event["event_id"], event["occurred_at"], orjson.dumps(event["payload"],
                                                                                    option=orjson.OPT_SORT_KEYS)))
    return out


def test_batches_of_3_and_of_1000_publish_and_hold_the_same(crm_stack: StackEndpoints, tmp_path: Path) -> None:
    sales = load_sales(SLICE)[0][:SALES]
    member_sales = sum(1 for s in sales if s.member_id)
    big_prefix, big_schema, big = run(crm_stack, tmp_path, sales, 1_000)
    small_prefix, small_schema, small = run(crm_stack, tmp_path, sales, 3)
    try:
        big_profiles = published(crm_stack, MEMBER_PROFILES.qualified(big_prefix), member_sales)
        small_profiles = published(crm_stack, MEMBER_PROFILES.qualified(small_prefix), len(big_profiles))
        big_tiers = published(crm_stack, MEMBER_TIER_CHANGED.qualified(big_prefix), 1)
        small_tiers = published(crm_stack, MEMBER_TIER_CHANGED.qualified(small_prefix), len(big_tiers))
    finally:
        big.stop()
        small.stop()
    # The drill must exercise what batches used to change: sweeps moving tiers down, points lapsing.
    moves = Counter((orjson.loads(t[3])["old_tier"], orjson.loads(t[3])["new_tier"]) for t in big_tiers)
    downs = sum(n for (old, new), n in moves.items() if new == "member")
    assert len(big_tiers) > 50 and downs > 10, f"too few tier moves to prove anything: {moves}"
    assert len(big_profiles) > member_sales, "no midnight review moved a tier (one profile update per sale only)"
    assert small_profiles == big_profiles, "the profile updates differ with the batch size"
    assert small_tiers == big_tiers, "the tier changes differ with the batch size"

    big_state = asyncio.run(read_snapshot(crm_stack.database_url, {"member_profile": big_schema}))
    small_state = asyncio.run(read_snapshot(crm_stack.database_url, {"member_profile": small_schema}))
    tables = ["member_profile.profiles", "member_profile.points_lots", "member_profile.points_ledger",
              "member_profile.tiers", "member_profile.purchases"]
    expiries = [row for row in big_state.tables["member_profile.points_ledger"] if "expire" in row]
    assert len(expiries) > 50, f"only {len(expiries)} lots lapsed: the check would not prove expiry is batch-proof"
    assert small_state.describe(big_state, tables) == "identical"
