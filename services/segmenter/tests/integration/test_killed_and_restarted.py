"""The segmenter SIGKILLed mid-stream and restarted: no decision lost, none made twice.

Profile updates of the December 2010 slice (built with member-profile's own `apply_sale`, as
member-profile publishes them) are on `member.profiles.v1`; the segmenter is killed once it has
applied some of them, then restarted. On `member.segments.v1`, read plainly, every member's
changes must form one unbroken chain per dimension (each change starts where the previous one
ended: a lost change would break it, a change applied twice would repeat it), and the chain's end
must be what the API serves.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from crm_shared.datasets.online_retail import load_sales
from crm_shared.events import member_event
from crm_shared.kafka import consumer_lag, make_producer
from crm_shared.serde import encode
from crm_shared.testing import REPO_ROOT, StackEndpoints, read_topic, start_service
from crm_shared.topics import MEMBER_PROFILES, MEMBER_SEGMENTS
from member_profile.domain import Profile, apply_sale
from member_profile.handlers import profile_document

pytestmark = pytest.mark.integration

SLICE = REPO_ROOT / "deploy" / "demo-data" / "online_retail_2010-12.csv.gz"
OPS = {"x-api-key": "dev-ops"}


def profile_updates() -> list[Any]:
    sales, _ = load_sales(SLICE)
    sales.sort(key=lambda s: s.occurred_at)
    profiles: dict[str, Profile] = {}
    events = []
    for sale in sales:
        if sale.member_id is None:
            continue
        profile = apply_sale(profiles.get(sale.member_id, Profile(sale.member_id)), sale)
        profiles[sale.member_id] = profile
        events.append(member_event(profile_document(profile, sale.occurred_at, tier="member", points=0, erased=False),
                                   event_type="MemberProfileUpdated", member_id=sale.member_id,
                                   occurred_at=sale.occurred_at, source="test",
                                   identity=f"profile/{sale.member_id}/{sale.event_id}"))
    return events


async def publish(bootstrap: str, topic: str, events: list[Any]) -> None:
    producer = make_producer(bootstrap, client_id="test-profiles")
    await producer.start()
    try:
        for event in events:
            await producer.send(topic, encode(event), key=event.key.encode())
        await producer.flush()
    finally:
        await producer.stop()


def applied(url: str, group: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith("crm_consumer_events_applied_total") and f'consumer="{group}"' in line:
            return float(line.rsplit(" ", 1)[-1])
    return 0.0


def test_killed_mid_stream_and_restarted_loses_and_repeats_no_segment_change(crm_stack: StackEndpoints,
                                                                             tmp_path: Path) -> None:
    prefix, schema = f"sk{uuid.uuid4().hex[:6]}.", f"sg_{uuid.uuid4().hex[:8]}"
    events = profile_updates()
    env = {"SEGMENTER_SCHEMA_NAME": schema, "SEGMENTER_CONSUMER_BATCH": "100"}
    group = f"{prefix}segmenter.profiles"
    service = start_service("segmenter", crm_stack, tmp_path, prefix=prefix, extra_env=env)
    asyncio.run(publish(crm_stack.kafka_bootstrap, MEMBER_PROFILES.qualified(prefix), events))
    killed_at = 0.0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        killed_at = applied(service.url, group)
        if killed_at >= len(events) * 0.3:
            break
        time.sleep(0.05)
    service.kill()
    assert 0 < killed_at < len(events), f"killed at {killed_at}: the drill needs a partial state"

    service = start_service("segmenter", crm_stack, tmp_path, prefix=prefix, extra_env=env)
    try:
        deadline = time.monotonic() + 180
        while asyncio.run(consumer_lag(crm_stack.kafka_bootstrap, group, [MEMBER_PROFILES.qualified(prefix)])).get(
                MEMBER_PROFILES.qualified(prefix)) != 0:
            assert time.monotonic() < deadline, "the restarted segmenter did not catch up"
            time.sleep(0.5)
        time.sleep(1.5)  # the relay's last batch
        # members with a purchase (returns alone give nothing to segment)
        members = sorted({e.key for e in events if e.payload.first_purchase_at is not None})
        records = asyncio.run(read_topic(crm_stack.kafka_bootstrap, MEMBER_SEGMENTS.qualified(prefix),
                                         expected=3 * len(members), timeout=60, settle=3))
        chains: dict[tuple[str, str], list[dict[str, Any]]] = {}
        seen: set[str] = set()
        for record in records:  # per member (the partition key) in publish order
            event = orjson.loads(record.value)
            if event["event_id"] in seen:
                continue  # the relay may publish an event twice (at-least-once); its id says so
            seen.add(event["event_id"])
            payload = event["payload"]
            chains.setdefault((payload["member_id"], payload["dimension"]), []).append(payload)
        broken = []
        for key, chain in chains.items():
            if chain[0]["old"] is not None:
                broken.append((key, "first change does not start from nothing"))
            for before, after in itertools.pairwise(chain):
                if after["old"] != before["new"] or after["old"] == after["new"]:
                    broken.append((key, f"{before['old']}->{before['new']} then {after['old']}->{after['new']}"))
        assert not broken, broken[:10]
        assert {m for m, _ in chains} == set(members)
        for member_id in members[:60]:
            served = httpx.get(f"{service.url}/v1/members/{member_id}/segments", headers=OPS).json()
            for dimension in ("value_tier", "persona", "cluster"):
                assert chains[(member_id, dimension)][-1]["new"] == served["segments"][dimension], (member_id, dimension)
    finally:
        service.stop()
