"""Members, consent, erasure, points and tiers against the real stack: what the front desk, ops and
the other services (through the topics) see."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from crm_shared.events import Sale
from crm_shared.kafka import consumer_lag
from crm_shared.replay import replay_kafka
from crm_shared.testing import StackEndpoints, read_topic, start_service
from crm_shared.topics import MEMBER_ERASED, MEMBER_PROFILES, MEMBER_TIER_CHANGED, POS_SALES

pytestmark = pytest.mark.integration
OPS = {"x-api-key": "dev-ops"}
T0 = datetime(2011, 1, 10, 11, 0, tzinfo=UTC)


def a_sale(sale_id: str, member: str, when: datetime, price: str, *, kind: str = "sale", qty: int = 1) -> Sale:
    return Sale.model_validate({"sale_id": sale_id, "store_id": "s1", "terminal_id": "t1", "member_id": member,
                                "occurred_at": when.isoformat(), "currency": "GBP", "kind": kind,
                                "lines": [{"sku": "A", "quantity": qty, "unit_price": price}]})


@pytest.fixture(scope="module")
def service(crm_stack: StackEndpoints, tmp_path_factory: pytest.TempPathFactory) -> Any:
    prefix = f"ml{uuid.uuid4().hex[:6]}."
    process = start_service("member_profile", crm_stack, tmp_path_factory.mktemp("mp"), prefix=prefix,
                            extra_env={"MEMBER_PROFILE_SCHEMA_NAME": f"member_profile_{uuid.uuid4().hex[:8]}",
                                       "MEMBER_PROFILE_RELAY_IDLE_POLL_SECONDS": "0.05"})
    yield process, prefix, crm_stack.kafka_bootstrap
    process.stop()


def publish(bootstrap: str, prefix: str, sales: list[Sale]) -> None:
    asyncio.run(replay_kafka(sales, bootstrap=bootstrap, topic_prefix=prefix, progress=False))
    group, topic = f"{prefix}member-profile.sales", POS_SALES.qualified(prefix)
    deadline = time.monotonic() + 60
    while asyncio.run(consumer_lag(bootstrap, group, [topic])).get(topic) != 0:
        assert time.monotonic() < deadline, "member-profile did not catch up"
        time.sleep(0.3)


def test_enrol_look_up_consent_and_bad_input(service: Any) -> None:
    process, _, _ = service
    url: str = process.url
    body = {"member_id": "card-1001", "given_name": "Ada", "family_name": "Byron", "email": "Ada@Example.COM",
            "phone": "+44 20 7946 0958", "card_number": "6004001001", "home_store": "s1",
            "consents": [{"channel": "sms", "granted": True, "source": "s1"}]}
    created = httpx.post(f"{url}/v1/members", json=body, headers={"x-api-key": "dev-pos-s1"})
    assert created.status_code == 201, created.text
    assert created.json()["personal"]["phone"] == "+442079460958"
    assert created.json()["personal"]["email"] == "Ada@example.com"
    assert created.json()["consents"]["sms"]["granted"] is True

    again = httpx.post(f"{url}/v1/members", json={**body, "member_id": "card-1002"}, headers=OPS)
    assert again.status_code == 409 and again.json()["detail"][0]["field"] == "phone"
    other_store = httpx.post(f"{url}/v1/members", json={**body, "member_id": "x", "phone": None, "email": None,
                                                         "card_number": None, "home_store": "s2"},
                             headers={"x-api-key": "dev-pos-s1"})
    assert other_store.status_code == 403
    for field, value in (("phone", "12345"), ("email", "not-an-email"), ("card_number", "12ab")):
        bad = httpx.post(f"{url}/v1/members", json={**body, "member_id": "y", field: value}, headers=OPS)
        assert bad.status_code == 422 and field in [d["field"] for d in bad.json()["detail"]], bad.text
    unknown_channel = httpx.put(f"{url}/v1/members/card-1001/consents/fax", json={"granted": True, "source": "s1"},
                                headers=OPS)
    assert unknown_channel.status_code == 422 and unknown_channel.json()["detail"][0]["field"] == "path.channel"
    future = httpx.post(f"{url}/v1/members", json={**body, "member_id": "z", "phone": None, "email": None,
                                                   "card_number": None, "birth_date": "2999-01-01"}, headers=OPS)
    assert future.status_code == 422 and future.json()["detail"][0]["field"] == "birth_date"

    found = httpx.post(f"{url}/v1/members/lookup", json={"phone": "+44 (0)20"}, headers=OPS)
    assert found.status_code == 422
    by_card = httpx.post(f"{url}/v1/members/lookup", json={"card_number": "6004001001"}, headers={"x-api-key": "dev-pos-s1"})
    assert by_card.status_code == 200 and by_card.json()["member_id"] == "card-1001"
    assert httpx.post(f"{url}/v1/members/lookup", json={"card_number": "6004001001"},
                     headers={"x-api-key": "dev-pos-s2"}).status_code == 404  # another store's member stays hidden
    withdrawn = httpx.put(f"{url}/v1/members/card-1001/consents/sms", json={"granted": False, "source": "web"}, headers=OPS)
    assert withdrawn.json()["sms"]["granted"] is False
    assert httpx.delete(f"{url}/v1/members/card-1001", headers={"x-api-key": "dev-marketing"}).status_code == 403


def test_points_are_earned_reversed_redeemed_once_and_never_negative(service: Any) -> None:
    process, prefix, bootstrap = service
    url: str = process.url
    member = "loyal-1"
    sales = [a_sale("p1", member, T0, "120.00"), a_sale("p2", member, T0 + timedelta(days=3), "80.50"),
             a_sale("p3", member, T0 + timedelta(days=4), "20.00", kind="return")]
    publish(bootstrap, prefix, sales)
    publish(bootstrap, prefix, sales)  # redelivered: nothing credited twice
    points = httpx.get(f"{url}/v1/members/{member}/points", headers=OPS).json()
    assert points["balance"] == 120 + 80 - 20
    assert sorted(m["kind"] for m in points["movements"]) == ["earn", "earn", "reverse"]

    redeem = {"points": 150, "idempotency_key": "till-7-0001"}
    first = httpx.post(f"{url}/v1/members/{member}/points/redeem", json=redeem, headers=OPS)
    assert first.status_code == 200 and first.json()["balance"] == 30
    replay = httpx.post(f"{url}/v1/members/{member}/points/redeem", json=redeem, headers=OPS)
    assert replay.json() == {**first.json(), "replayed": True}
    short = httpx.post(f"{url}/v1/members/{member}/points/redeem", json={"points": 31, "idempotency_key": "k2"},
                       headers=OPS)
    assert short.status_code == 409 and short.json()["balance"] == 30
    assert short.json()["detail"][0]["field"] == "points"

    # A big return after spending: takes back what is left, the balance stops at zero.
    publish(bootstrap, prefix, [a_sale("p4", member, T0 + timedelta(days=5), "100.00", kind="return")])
    assert httpx.get(f"{url}/v1/members/{member}/points", headers=OPS).json()["balance"] == 0


def test_points_expire_and_tiers_move_in_event_time(service: Any) -> None:
    process, prefix, bootstrap = service
    url: str = process.url
    member = "big-spender"
    publish(bootstrap, prefix, [a_sale("b1", member, T0, "2500.00")])
    profile = httpx.get(f"{url}/v1/members/{member}/profile", headers=OPS).json()
    assert profile["tier"] == "gold" and profile["points_balance"] == 2500
    # Thirteen months of event time later, a small sale: the old points lapsed, the tier fell back.
    publish(bootstrap, prefix, [a_sale("b2", member, T0 + timedelta(days=400), "10.00")])
    profile = httpx.get(f"{url}/v1/members/{member}/profile", headers=OPS).json()
    assert profile["points_balance"] == 10
    assert profile["tier"] == "member"
    movements = httpx.get(f"{url}/v1/members/{member}/points", headers=OPS).json()["movements"]
    assert {"kind": "expire", "points": -2500} in [{"kind": m["kind"], "points": m["points"]} for m in movements]
    changes = asyncio.run(read_topic(bootstrap, MEMBER_TIER_CHANGED.qualified(prefix), expected=2, timeout=30))
    mine = [orjson.loads(r.value)["payload"] for r in changes if r.key == member.encode()]
    assert [(c["old_tier"], c["new_tier"]) for c in mine] == [("member", "gold"), ("gold", "member")]
    profiles = asyncio.run(read_topic(bootstrap, MEMBER_PROFILES.qualified(prefix), expected=1, timeout=30))
    latest = [orjson.loads(r.value)["payload"] for r in profiles if r.key == member.encode()][-1]
    assert latest["tier"] == "member" and latest["frequency"] == 2 and "phone" not in latest


def test_erasure_forgets_the_person_keeps_the_aggregates_and_tells_everyone(service: Any) -> None:
    process, prefix, bootstrap = service
    url: str = process.url
    body = {"member_id": "forget-me", "given_name": "Grace", "phone": "+447700900123", "home_store": "s1",
            "consents": [{"channel": "phone", "granted": True, "source": "s1"}]}
    assert httpx.post(f"{url}/v1/members", json=body, headers=OPS).status_code == 201
    publish(bootstrap, prefix, [a_sale("f1", "forget-me", T0, "40.00")])
    erased = httpx.delete(f"{url}/v1/members/forget-me", headers=OPS)
    assert erased.status_code == 200
    member = httpx.get(f"{url}/v1/members/forget-me", headers=OPS).json()
    assert member["personal"] is None and member["consents"] == {} and member["erased_at"]
    assert httpx.get(f"{url}/v1/members/forget-me/profile", headers=OPS).json()["monetary"] == "40.00"
    assert httpx.post(f"{url}/v1/members/lookup", json={"phone": "+447700900123"}, headers=OPS).status_code == 404
    events = asyncio.run(read_topic(bootstrap, MEMBER_ERASED.qualified(prefix), expected=1, timeout=30))
    payload = orjson.loads(events[-1].value)["payload"]
    assert payload["member_id"] == "forget-me" and "Grace" not in events[-1].value.decode()
    assert httpx.delete(f"{url}/v1/members/never-was", headers=OPS).status_code == 404
    log_text = Path(process.log_path).read_text()
    assert "Grace" not in log_text and "447700900123" not in log_text


def test_call_list_names_high_value_members_overdue_by_their_own_rhythm(service: Any) -> None:
    process, prefix, bootstrap = service
    url: str = process.url
    assert httpx.post(f"{url}/v1/members", json={"member_id": "regular", "given_name": "Ida", "phone": "+447700900999",
                                                  "home_store": "s9",
                                                  "consents": [{"channel": "phone", "granted": True, "source": "s9"}]},
                      headers=OPS).status_code == 201
    later = T0 + timedelta(days=500)  # after every other test's events: this test's as_of is its own last sale
    weekly = [a_sale(f"w{i}", "regular", later + timedelta(days=7 * i), "60.00") for i in range(6)]
    weekly = [s.model_copy(update={"store_id": "s9"}) for s in weekly]
    steady = [a_sale(f"q{i}", "steady", later + timedelta(days=7 * i), "5.00").model_copy(update={"store_id": "s9"})
              for i in range(12)]
    publish(bootstrap, prefix, weekly + steady)  # steady keeps buying; regular stopped after week 5
    listing = httpx.get(f"{url}/v1/call-list", params={"store": "s9"}, headers={"x-api-key": "dev-pos-s9"}).json()
    assert [m["member_id"] for m in listing["members"]] == ["regular"]
    entry = listing["members"][0]
    assert entry["phone"] == "+447700900999" and "usually every 7" in entry["reason"]
    assert len(entry["last_purchases"]) == 3
    assert httpx.get(f"{url}/v1/call-list", params={"store": "s9"}, headers={"x-api-key": "dev-pos-s1"}).status_code == 403




def test_a_sale_dated_years_ahead_is_dead_lettered_and_event_time_stays(service: Any) -> None:
    process, prefix, bootstrap = service
    url: str = process.url
    before = httpx.get(f"{url}/v1/members", params={"limit": 1}, headers=OPS).json()["as_of"]
    typo = a_sale("typo-2031", "fat-finger", datetime(2031, 1, 10, 11, tzinfo=UTC), "3.00")
    asyncio.run(replay_kafka([typo], bootstrap=bootstrap, topic_prefix=prefix, progress=False))
    dead = asyncio.run(read_topic(bootstrap, POS_SALES.dlq(prefix), expected=1, timeout=30))
    reasons = [dict(r.headers)["dlq.reason"].decode() for r in dead]
    assert any("more than 24 h after the record was written" in r for r in reasons)
    publish(bootstrap, prefix, [])  # wait until the consumer has moved past it
    assert httpx.get(f"{url}/v1/members", params={"limit": 1}, headers=OPS).json()["as_of"] == before
    assert httpx.get(f"{url}/v1/members/fat-finger/profile", headers=OPS).status_code == 404


def test_a_late_earlier_sale_does_not_hide_the_spend_after_it(service: Any) -> None:
    process, prefix, bootstrap = service
    url: str = process.url
    at = T0 + timedelta(days=600)
    publish(bootstrap, prefix, [a_sale("g1", "gold-late", at, "2500.00")])
    publish(bootstrap, prefix, [a_sale("g0", "gold-late", at - timedelta(minutes=10), "3.00")])
    assert httpx.get(f"{url}/v1/members/gold-late/profile", headers=OPS).json()["tier"] == "gold"


def test_odd_requests_get_a_4xx_naming_the_field_and_a_raced_redemption_answers_once(service: Any) -> None:
    process, prefix, bootstrap = service
    url: str = process.url
    naive = httpx.put(f"{url}/v1/members/x/consents/email", json={"granted": True, "source": "s1",
                                                                   "at": "2024-01-01T00:00:00"}, headers=OPS)
    assert naive.status_code == 422 and naive.json()["detail"][0]["field"] == "at"
    assert httpx.get(f"{url}/v1/members", params={"offset": 10**20}, headers=OPS).status_code == 422
    card = httpx.post(f"{url}/v1/members/lookup", json={"card_number": "12\u00003456"}, headers=OPS)
    assert card.status_code == 422 and card.json()["detail"][0]["field"] == "card_number"
    nul_email = httpx.post(f"{url}/v1/members", json={"member_id": "nul", "home_store": "s1",
                                                       "email": "b\u0000ob@example.com"}, headers=OPS)
    assert nul_email.status_code == 422 and nul_email.json()["detail"][0]["field"] == "email"

    publish(bootstrap, prefix, [a_sale("r1", "racer", T0 + timedelta(days=601), "100.00")])

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, headers=OPS) as client:
            return list(await asyncio.gather(*(client.post("/v1/members/racer/points/redeem",
                                                           json={"points": 40, "idempotency_key": "same-key"})
                                               for _ in range(8))))

    answers = asyncio.run(race())
    assert {r.status_code for r in answers} == {200}
    assert {r.json()["balance"] for r in answers} == {60}
    assert httpx.get(f"{url}/v1/members/racer/points", headers=OPS).json()["balance"] == 60
