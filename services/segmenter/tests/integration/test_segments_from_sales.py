"""The segmenter behind member-profile on the real broker, PostgreSQL and Redis: the December 2010
slice of Online Retail goes in as sales; segments, rules and product figures come out, and a
second delivery, a poison record and an erasure are handled."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from crm_shared.datasets.online_retail import load_sales
from crm_shared.events import MemberErased, MemberProfileUpdated, Sale, member_event
from crm_shared.kafka import consumer_lag
from crm_shared.processes import ServiceProcess
from crm_shared.replay import replay_kafka
from crm_shared.serde import encode
from crm_shared.testing import REPO_ROOT, StackEndpoints, read_topic, start_service
from crm_shared.topics import ANALYTICS_ASSOCIATIONS, MEMBER_ERASED, MEMBER_PROFILES, MEMBER_SEGMENTS, POS_SALES

pytestmark = pytest.mark.integration

SLICE = REPO_ROOT / "deploy" / "demo-data" / "online_retail_2010-12.csv.gz"
OPS = {"x-api-key": "dev-ops"}
PROFILE_URL: dict[str, str] = {}  # member-profile of each pipeline, by topic prefix


def wait_for_lag_zero(bootstrap: str, groups: dict[str, str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    pending = dict(groups)
    while time.monotonic() < deadline and pending:
        for group, topic in list(pending.items()):
            if asyncio.run(consumer_lag(bootstrap, group, [topic])).get(topic) == 0:
                del pending[group]
        time.sleep(0.5)
    if pending:
        raise AssertionError(f"consumers still behind after {timeout}s: {sorted(pending)}")


def caught_up(bootstrap: str, prefix: str) -> None:
    wait_for_lag_zero(bootstrap, {f"{prefix}member-profile.sales": POS_SALES.qualified(prefix)})
    segmenter = {f"{prefix}segmenter.profiles": MEMBER_PROFILES.qualified(prefix),
                 f"{prefix}segmenter.sales": POS_SALES.qualified(prefix)}
    for _ in range(2):  # twice, 2 s apart: member-profile's relay may still be publishing the last profiles
        time.sleep(2)
        wait_for_lag_zero(bootstrap, segmenter)


@pytest.fixture(scope="module")
def slice_sales() -> list[Sale]:
    return load_sales(SLICE)[0]


@pytest.fixture(scope="module")
def pipeline(crm_stack: StackEndpoints, tmp_path_factory: pytest.TempPathFactory,
             slice_sales: list[Sale]) -> Iterator[tuple[str, ServiceProcess]]:
    prefix = f"sg{uuid.uuid4().hex[:6]}."
    logs = tmp_path_factory.mktemp("segmenter")
    # One partition: event time advances as in the file, so the weekly reviews fall on its Mondays. (With
    # several, one partition read ahead moves the clock past every Monday of the slice at once.)
    profile = start_service("member_profile", crm_stack, logs, prefix=prefix, partitions=1,
                            extra_env={"MEMBER_PROFILE_SCHEMA_NAME": f"mp_{uuid.uuid4().hex[:8]}"})
    segmenter = start_service("segmenter", crm_stack, logs, prefix=prefix, partitions=1,
                              extra_env={"SEGMENTER_SCHEMA_NAME": f"sg_{uuid.uuid4().hex[:8]}",
                                         "SEGMENTER_RULES_PUBLISH_SECONDS": "1", "SEGMENTER_CONSUMER_BATCH": "500"})
    try:
        asyncio.run(replay_kafka(slice_sales, bootstrap=crm_stack.kafka_bootstrap, topic_prefix=prefix, progress=False))
        caught_up(crm_stack.kafka_bootstrap, prefix)
        PROFILE_URL[prefix] = profile.url
        yield prefix, segmenter
    finally:
        segmenter.stop()
        profile.stop()


def members_of(sales: list[Sale]) -> set[str]:
    return {s.member_id for s in sales if s.member_id is not None and s.kind == "sale"}


def test_every_member_gets_a_value_tier_persona_and_cluster_and_the_topic_says_so(
        crm_stack: StackEndpoints, pipeline: tuple[str, ServiceProcess], slice_sales: list[Sale]) -> None:
    prefix, segmenter = pipeline
    segments = httpx.get(f"{segmenter.url}/v1/segments", headers=OPS, timeout=30).json()
    buyers = members_of(slice_sales)
    sizes = {d: sum(s["size"] for s in rows) for d, rows in segments["dimensions"].items()}
    assert sizes["value_tier"] == sizes["persona"] == sizes["cluster"] >= len(buyers) - 5
    assert len(segments["dimensions"]["cluster"]) >= 3, "the learned clusters collapsed"
    assert segments["as_of"].startswith("2010-12-23")

    # The topic, read plainly: each member's latest event of each dimension says what the API says.
    records = asyncio.run(read_topic(crm_stack.kafka_bootstrap, MEMBER_SEGMENTS.qualified(prefix),
                                     expected=3 * len(buyers) - 15, timeout=60))
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        event = orjson.loads(record.value)
        latest[(event["payload"]["member_id"], event["payload"]["dimension"])] = event["payload"]
    for member_id in sorted(buyers)[:40]:
        served = httpx.get(f"{segmenter.url}/v1/members/{member_id}/segments", headers=OPS).json()
        for dimension in ("value_tier", "persona", "cluster"):
            assert latest[(member_id, dimension)]["new"] == served["segments"][dimension], (member_id, dimension)
        assert served["history"], "a classified member has a history"
        assert 0.0 <= served["p_active"] <= 1.0

    # The chain's most frequent December buyer is a champion or loyal, not asleep.
    visits = Counter(s.member_id for s in slice_sales if s.member_id and s.kind == "sale")
    best, _ = visits.most_common(1)[0]
    top = httpx.get(f"{segmenter.url}/v1/members/{best}/segments", headers=OPS).json()
    assert top["segments"]["value_tier"] in {"champions", "loyal"}, top
    assert top["rfm"]["frequency"] == 5

    # member-profile keeps the segmenter's word too: its ?segment= filter lists the same members
    listed = set(httpx.get(f"{segmenter.url}/v1/segments/champions/members", headers=OPS,
                           params={"limit": 5000}).json()["members"])
    deadline = time.monotonic() + 30
    while True:
        filtered = {m["member_id"] for m in httpx.get(f"{PROFILE_URL[prefix]}/v1/members", headers=OPS,
                                                     params={"segment": "champions", "limit": 500}).json()["members"]}
        if filtered == listed or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert listed and filtered == listed
    bad = httpx.get(f"{PROFILE_URL[prefix]}/v1/members", headers=OPS, params={"segment": "DROP TABLE"})
    assert bad.status_code == 422 and "segment" in bad.text

    described = httpx.get(f"{segmenter.url}/v1/segments/champions", headers=OPS).json()
    assert described["size"] > 0 and described["describing_features"], described
    assert any("visit" in f["feature"] or "monetary" in f["feature"] for f in described["describing_features"])
    assert described["example_members"]


def test_segment_sizes_per_event_day_are_the_recorded_trend(pipeline: tuple[str, ServiceProcess]) -> None:
    _, segmenter = pipeline
    over_time = httpx.get(f"{segmenter.url}/v1/segment-sizes", headers=OPS, params={"dimension": "persona"}).json()
    days = [row["day"] for row in over_time["days"]]
    # A day is recorded when a batch's event time enters it (a fast replay records few days, a live feed each one).
    assert days == sorted(days) and days[-1] == over_time["as_of"][:10] == "2010-12-23"
    assert all("2010-12-01" <= day <= "2010-12-23" for day in days)
    assert sum(over_time["days"][-1]["sizes"].values()) > 0
    # Each day's sizes are what GET /v1/segments/{id} keeps as that segment's history.
    regular = {h["day"]: h["size"] for h in httpx.get(f"{segmenter.url}/v1/segments/regular", headers=OPS).json()
               ["trend"]["history"]}
    assert {row["day"]: row["sizes"].get("regular", 0) for row in over_time["days"]} == regular
    last_week = httpx.get(f"{segmenter.url}/v1/segment-sizes", headers=OPS, params={"dimension": "persona", "days": 7})
    assert [row["day"] for row in last_week.json()["days"]] == [d for d in days if d >= "2010-12-17"]
    bad = httpx.get(f"{segmenter.url}/v1/segment-sizes", headers=OPS, params={"dimension": "colour"})
    assert bad.status_code == 422 and "dimension" in bad.text


def test_rules_and_bought_with_match_a_plain_count_of_the_same_baskets(
        pipeline: tuple[str, ServiceProcess], slice_sales: list[Sale]) -> None:
    _, segmenter = pipeline
    baskets = [frozenset(line.sku for line in s.lines) for s in slice_sales if s.kind == "sale"]
    n = len(baskets)
    answer = httpx.get(f"{segmenter.url}/v1/rules", headers=OPS, timeout=60,
                       params={"min_support": 0.02, "min_confidence": 0.5, "limit": 10_000}).json()
    assert answer["baskets"] == n
    rules = answer["rules"]
    assert rules, "December 2010 has rules at 2% support"
    item_count = Counter(item for basket in baskets for item in basket)
    for rule in rules:
        left = frozenset(rule["antecedents"])
        both = sum(1 for b in baskets if left <= b and rule["consequent"] in b)
        left_count = sum(1 for b in baskets if left <= b)
        assert rule["support"] == pytest.approx(both / n)
        assert rule["confidence"] == pytest.approx(both / left_count)
        assert rule["lift"] == pytest.approx(both * n / (left_count * item_count[rule["consequent"]]))
    # Every single-antecedent rule a brute-force pair count finds is there.
    pairs: Counter[tuple[str, str]] = Counter()
    for basket in baskets:
        frequent = sorted(i for i in basket if item_count[i] / n >= 0.02)
        for a in frequent:
            for b in frequent:
                if a != b:
                    pairs[(a, b)] += 1
    expected = {(a, b) for (a, b), c in pairs.items() if c / n >= 0.02 and c / item_count[a] >= 0.5}
    served = {(r["antecedents"][0], r["consequent"]) for r in rules if len(r["antecedents"]) == 1}
    assert served == expected

    sku = rules[0]["consequent"]
    with_it = httpx.get(f"{segmenter.url}/v1/products/{sku}/bought-with", headers=OPS).json()
    assert with_it["baskets_with_sku"] == item_count[sku]
    first = with_it["bought_with"][0]
    assert first["baskets"] == sum(1 for b in baskets if sku in b and first["sku"] in b)


def test_rules_are_published_when_they_change(crm_stack: StackEndpoints, pipeline: tuple[str, ServiceProcess]) -> None:
    prefix, _ = pipeline
    records = asyncio.run(read_topic(crm_stack.kafka_bootstrap, ANALYTICS_ASSOCIATIONS.qualified(prefix), expected=1,
                                     timeout=30))
    scopes = {orjson.loads(r.value)["payload"]["scope"] for r in records}
    assert "chain" in scopes
    chain = [orjson.loads(r.value)["payload"] for r in records if orjson.loads(r.value)["payload"]["scope"] == "chain"]
    assert chain[-1]["rules"] and chain[-1]["window_end"].startswith("2010-12")
    assert all(len(rule["antecedents"]) <= 2 for rule in chain[-1]["rules"])
    # published only when the ranked rules changed: no two consecutive publications of a scope are the same list
    ranked = [[(tuple(r["antecedents"]), r["consequent"]) for r in p["rules"]] for p in chain]
    assert all(a != b for a, b in itertools.pairwise(ranked))


def test_top_products_and_seasonality_equal_a_plain_sum(pipeline: tuple[str, ServiceProcess],
                                                        slice_sales: list[Sale]) -> None:
    _, segmenter = pipeline
    revenue: dict[str, Decimal] = defaultdict(Decimal)
    units: dict[str, int] = defaultdict(int)
    for sale in slice_sales:
        if sale.store_id != "or-united-kingdom":
            continue
        sign = -1 if sale.kind == "return" else 1
        for line in sale.lines:
            revenue[line.sku] += sign * line.net
            units[line.sku] += sign * line.quantity
    answer = httpx.get(f"{segmenter.url}/v1/products/top", headers=OPS,
                       params={"store": "or-united-kingdom", "from": "2010-12-01", "to": "2010-12-31", "limit": 5}).json()
    expected = sorted(revenue, key=lambda k: (-revenue[k], k))[:5]
    assert [p["sku"] for p in answer["products"]] == expected
    assert [Decimal(p["revenue"]) for p in answer["products"]] == [revenue[k] for k in expected]
    worst = httpx.get(f"{segmenter.url}/v1/products/top", headers=OPS,
                      params={"store": "or-united-kingdom", "from": "2010-12-01", "to": "2010-12-31",
                              "order": "worst", "limit": 3}).json()
    assert [p["sku"] for p in worst["products"]] == sorted(revenue, key=lambda k: (revenue[k], k))[:3]
    season = httpx.get(f"{segmenter.url}/v1/products/{expected[0]}/seasonality", headers=OPS,
                       params={"store": "or-united-kingdom"}).json()
    assert season["units"] == units[expected[0]]
    assert set(season["by_month"]) == {"12"}
    last_28 = sum(line.quantity * (-1 if s.kind == "return" else 1) for s in slice_sales
                  if s.store_id == "or-united-kingdom" for line in s.lines if line.sku == expected[0])
    assert season["trend"]["last_28_days"] == last_28 and season["trend"]["previous_28_days"] == 0
    assert season["trend"]["direction"] == "new"  # the slice is one month: nothing before it
    bad = httpx.get(f"{segmenter.url}/v1/products/top", headers=OPS, params={"from": "2010-12-31", "to": "2010-12-01"})
    assert bad.status_code == 422 and "from" in bad.text


def nan_profile() -> bytes:
    """A profile update whose discount share is the JSON string "NaN"."""
    profile = MemberProfileUpdated.model_validate({
        "member_id": "nan-1", "as_of": "2010-12-20T12:00:00+00:00", "first_purchase_at": "2010-12-01T10:00:00+00:00",
        "last_purchase_at": "2010-12-20T10:00:00+00:00", "recency_days": 0.1, "frequency": 2, "returns": 0,
        "monetary": "40.00", "average_basket_value": "20.00", "average_basket_size": 4.0, "returns_rate": 0.0,
        "discount_share": 0.0, "preferred_store": None, "hour_of_day": {"10": 2}, "weekday": {"0": 2},
        "visit_rhythm": {"intervals": 1, "mean_days": 19.0, "spread_days": 0.0, "days_overdue": None},
        "tier": "member", "points_balance": 40})
    document = orjson.loads(encode(member_event(profile, event_type="MemberProfileUpdated", member_id="nan-1",
                                                occurred_at=profile.as_of, source="test", identity="profile/nan-1/1")))
    document["payload"]["discount_share"] = "NaN"
    return orjson.dumps(document)


def test_second_delivery_changes_nothing_poison_goes_to_dlq_and_erasure_forgets(
        crm_stack: StackEndpoints, pipeline: tuple[str, ServiceProcess], slice_sales: list[Sale]) -> None:
    prefix, segmenter = pipeline
    before = httpx.get(f"{segmenter.url}/v1/segments", headers=OPS).json()
    asyncio.run(replay_kafka(slice_sales, bootstrap=crm_stack.kafka_bootstrap, topic_prefix=prefix, progress=False))
    caught_up(crm_stack.kafka_bootstrap, prefix)
    assert httpx.get(f"{segmenter.url}/v1/segments", headers=OPS).json() == before

    member = sorted(members_of(slice_sales))[0]

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=crm_stack.kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(MEMBER_PROFILES.qualified(prefix), b"{not json", key=b"x")
            await producer.send_and_wait(MEMBER_PROFILES.qualified(prefix), orjson.dumps({"event_id": "nope"}), key=b"y")
            # The contract refuses NaN (the clusters would learn it for good).
            await producer.send_and_wait(MEMBER_PROFILES.qualified(prefix), nan_profile(), key=b"nan-1")
            erased = member_event(MemberErased(member_id=member, erased_at=datetime(2010, 12, 24, tzinfo=UTC),
                                               requested_by="test"), event_type="MemberErased", member_id=member,
                                  occurred_at=datetime(2010, 12, 24, tzinfo=UTC), source="test",
                                  identity=f"erase/{member}/{uuid.uuid4()}")
            await producer.send_and_wait(MEMBER_ERASED.qualified(prefix), encode(erased), key=member.encode())
        finally:
            await producer.stop()

    asyncio.run(send())
    dead = asyncio.run(read_topic(crm_stack.kafka_bootstrap, MEMBER_PROFILES.dlq(prefix), expected=3, timeout=30))
    assert len(dead) == 3 and all(dict(r.headers).get("dlq.reason") for r in dead)
    assert dict(next(r for r in dead if r.key == b"nan-1").headers)["dlq.reason"] == (
        b"breaks the contract: payload.discount_share: Input should be a finite number")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if httpx.get(f"{segmenter.url}/v1/members/{member}/segments", headers=OPS).status_code == 404:
            break
        time.sleep(0.3)
    assert httpx.get(f"{segmenter.url}/v1/members/{member}/segments", headers=OPS).status_code == 404
    for segment in ("champions", "loyal", "regular", "cluster-0"):
        listed = httpx.get(f"{segmenter.url}/v1/segments/{segment}/members", headers=OPS, params={"limit": 5000}).json()
        assert member not in listed["members"]
    assert httpx.get(f"{segmenter.url}/v1/members/nan-1/segments", headers=OPS).status_code == 404
    # the consumer went on: the rest are still served
    other = sorted(members_of(slice_sales))[1]
    assert httpx.get(f"{segmenter.url}/v1/members/{other}/segments", headers=OPS).status_code == 200


def test_bad_requests_name_the_field_and_roles_are_enforced(pipeline: tuple[str, ServiceProcess]) -> None:
    _, segmenter = pipeline
    assert httpx.get(f"{segmenter.url}/v1/segments").status_code == 401
    assert httpx.get(f"{segmenter.url}/v1/segments", headers={"x-api-key": "dev-pos-or-united-kingdom"}).status_code == 403
    unknown = httpx.get(f"{segmenter.url}/v1/segments/nonsense", headers=OPS)
    assert unknown.status_code == 404 and "segment_id" in unknown.text
    bad = httpx.get(f"{segmenter.url}/v1/rules", headers=OPS, params={"min_support": 0})
    assert bad.status_code == 422 and "min_support" in bad.text
    assert httpx.get(f"{segmenter.url}/v1/segments/cluster-99", headers=OPS).status_code == 404
    other_store = httpx.get(f"{segmenter.url}/v1/products/top", params={"store": "or-france"},
                            headers={"x-api-key": "dev-pos-or-united-kingdom"})
    assert other_store.status_code == 403 and "store" in other_store.text
    own = httpx.get(f"{segmenter.url}/v1/products/top", params={"store": "or-united-kingdom"},
                    headers={"x-api-key": "dev-pos-or-united-kingdom"})
    assert own.status_code == 200 and own.json()["products"]
    late = httpx.get(f"{segmenter.url}/v1/products/top", headers=OPS, params={"from": "2200-12-31"})
    assert late.status_code == 422 and "from" in late.text
