"""The notifier beside member-profile on the real broker, PostgreSQL and Redis: basket rules, sales,
segment and tier changes, low stock and erasures go in as events; offers (and withheld records) come
out on marketing.offers.v1, every suppression is counted by reason, and campaigns answer over HTTP."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from crm_shared.events import (
    AssociationRulesChanged,
    MemberErased,
    MemberSegmentChanged,
    RuleDocument,
    Sale,
    SaleLine,
    TierChanged,
    member_event,
    sale_recorded,
    segmenter_event,
)
from crm_shared.kafka import consumer_lag
from crm_shared.processes import ServiceProcess
from crm_shared.serde import encode
from crm_shared.supply_events import GoodsReceipt, LowStock, ReceiptLine, goods_received, low_stock_detected
from crm_shared.testing import StackEndpoints, read_topic, start_service
from crm_shared.topics import (
    ANALYTICS_ASSOCIATIONS,
    CATALOG_PRODUCTS,
    INVENTORY_LOW_STOCK,
    INVENTORY_RECEIPTS,
    MARKETING_OFFERS,
    MEMBER_CONSENTS,
    MEMBER_ERASED,
    MEMBER_PROFILES,
    MEMBER_SEGMENTS,
    MEMBER_TIER_CHANGED,
    POS_SALES,
)
from notifier.domain import Proposal, in_control_group

pytestmark = pytest.mark.integration

OPS = {"x-api-key": "dev-ops"}
MARKETING = {"x-api-key": "dev-marketing"}
CROSS_SELL = "auto-cross-sell"
DAY = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
GROUPS = ("sales", "segments", "tiers", "profiles", "erasures", "rules", "low-stock")


class Stack:
    def __init__(self, endpoints: StackEndpoints, prefix: str, notifier: ServiceProcess, profile: ServiceProcess) -> None:
        self.endpoints, self.prefix, self.notifier, self.profile = endpoints, prefix, notifier, profile
        self.sales = 0

    def publish(self, topic: str, events: list[Any], raw: list[bytes] | None = None) -> None:
        async def send() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=self.endpoints.kafka_bootstrap)
            await producer.start()
            try:
                for event in events:
                    await producer.send_and_wait(self.prefix + topic, encode(event), key=event.key.encode())
                for value in raw or []:
                    await producer.send_and_wait(self.prefix + topic, value, key=b"poison")
            finally:
                await producer.stop()

        asyncio.run(send())
        self.settle()

    def settle(self, timeout: float = 60) -> None:
        """Until every notifier consumer group has read everything there is (all groups asked at once)."""
        deadline = time.monotonic() + timeout
        topics = {"sales": POS_SALES, "segments": MEMBER_SEGMENTS, "tiers": MEMBER_TIER_CHANGED, "erasures": MEMBER_ERASED,
                  "rules": ANALYTICS_ASSOCIATIONS, "low-stock": INVENTORY_LOW_STOCK, "consents": MEMBER_CONSENTS,
                  "catalog": CATALOG_PRODUCTS, "receipts": INVENTORY_RECEIPTS, "profiles": MEMBER_PROFILES}
        pending = dict(topics)

        async def behind(parts: list[str]) -> list[str]:
            lags = await asyncio.gather(*(consumer_lag(self.endpoints.kafka_bootstrap, f"{self.prefix}notifier.{part}",
                                                       [pending[part].qualified(self.prefix)]) for part in parts))
            return [part for part, lag in zip(parts, lags, strict=True)
                    if lag.get(pending[part].qualified(self.prefix)) != 0]

        while pending and time.monotonic() < deadline:
            still = set(asyncio.run(behind(sorted(pending))))
            pending = {part: topic for part, topic in pending.items() if part in still}
            if pending:
                time.sleep(0.2)
        assert not pending, f"notifier consumers behind after {timeout}s: {sorted(pending)}\n{self.notifier.tail()}"

    def sale(self, member: str, skus: list[str], at: datetime, *, store: str = "s1", price: str = "2.00") -> Sale:
        self.sales += 1
        return Sale(sale_id=f"sale-{self.sales}-{uuid.uuid4().hex[:6]}", store_id=store, terminal_id="t1",
                    member_id=member, occurred_at=at, currency="EUR",
                    lines=[SaleLine(sku=s, quantity=1, unit_price=Decimal(price)) for s in skus])

    def ring(self, *sales: Sale) -> None:
        self.publish(POS_SALES.name, [sale_recorded(s, source="test-till") for s in sales])

    def offers(self, member: str, expected: int, timeout: float = 20, campaign: str = CROSS_SELL) -> list[dict[str, Any]]:
        """The campaign's records for the member on marketing.offers.v1 (waits for `expected`, then settles)."""
        deadline = time.monotonic() + timeout
        found: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            records = asyncio.run(read_topic(self.endpoints.kafka_bootstrap, MARKETING_OFFERS.qualified(self.prefix),
                                             expected=0, timeout=3, settle=0.5))
            found = [e for e in (orjson.loads(r.value) for r in records) if mine(e, member, campaign)]
            if len(found) >= expected:
                time.sleep(1.0)  # anything extra (a duplicate) would have arrived by now
                records = asyncio.run(read_topic(self.endpoints.kafka_bootstrap,
                                                 MARKETING_OFFERS.qualified(self.prefix), expected=0, timeout=3))
                return [e for e in (orjson.loads(r.value) for r in records) if mine(e, member, campaign)]
            time.sleep(0.3)
        return found

    def report(self, campaign: str = CROSS_SELL) -> dict[str, Any]:
        answer = httpx.get(f"{self.notifier.url}/v1/campaigns/{campaign}/report", headers=MARKETING, timeout=10)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def enrol(self, member: str, *channels: str, birth_date: str | None = None) -> None:
        """Enrol at member-profile's desk; returns once its `member.consents.v1` record is in the notifier."""
        answer = httpx.post(f"{self.profile.url}/v1/members", headers=OPS, timeout=10, json={
            "member_id": member, "home_store": "s1", "birth_date": birth_date,
            "consents": [{"channel": c, "granted": True, "source": "s1"} for c in channels]})
        assert answer.status_code == 201, answer.text
        self.await_record(MEMBER_CONSENTS.qualified(self.prefix), member)
        self.settle()

    def await_record(self, topic: str, key: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            records = asyncio.run(read_topic(self.endpoints.kafka_bootstrap, topic, expected=0, timeout=2, settle=0.1))
            if any(r.key == key.encode() for r in records):
                return
            time.sleep(0.2)
        raise AssertionError(f"no record for {key} on {topic} within {timeout}s\n{self.profile.tail()}")


def mine(event: dict[str, Any], member: str, campaign: str) -> bool:
    return bool(event["key"] == member and event["payload"]["campaign_id"] == campaign)


def treated(stem: str, campaign: str = CROSS_SELL) -> str:
    """A fresh member id outside the campaign's 10% control group."""
    for i in range(1000):
        member = f"{stem}-{uuid.uuid4().hex[:6]}-{i}"
        if not in_control_group(member, campaign, 0.1):
            return member
    raise AssertionError("unreachable")


def controlled(stem: str, campaign: str = CROSS_SELL) -> str:
    for i in range(10_000):
        member = f"{stem}-{i}"
        if in_control_group(member, campaign, 0.1):
            return member
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def stack(crm_stack: StackEndpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prefix = f"nt{uuid.uuid4().hex[:6]}."
    logs = tmp_path_factory.mktemp("notifier")
    profile = start_service("member_profile", crm_stack, logs, prefix=prefix,
                            extra_env={"MEMBER_PROFILE_SCHEMA_NAME": f"mp_{uuid.uuid4().hex[:8]}"})
    notifier = start_service("notifier", crm_stack, logs, prefix=prefix, extra_env={
        "NOTIFIER_SCHEMA_NAME": f"nt_{uuid.uuid4().hex[:8]}", "NOTIFIER_CAMPAIGN_CACHE_SECONDS": "0",
        "NOTIFIER_DAILY_CAP": "2", "NOTIFIER_CONSUMER_BATCH": "200",
        "NOTIFIER_STORE_TIME_ZONES": '{"tokyo-1": "Asia/Tokyo"}',
        "NOTIFIER_TRIGGERS": "cross_sell,dormant_wakeup,tier_upgrade,welcome,run_out,birthday,after_sale,new_arrival"})
    try:
        s = Stack(crm_stack, prefix, notifier, profile)
        rules = AssociationRulesChanged(scope="chain", window_start=None, window_end=DAY, baskets=1000, min_support=0.01,
                                        min_confidence=0.3, rules=[
                                            RuleDocument(antecedents=["diapers"], consequent="beer", support=0.05,
                                                         confidence=0.6, lift=2.4),
                                            RuleDocument(antecedents=["bread"], consequent="butter", support=0.1,
                                                         confidence=0.5, lift=1.9),
                                            RuleDocument(antecedents=["pasta"], consequent="sauce", support=0.1,
                                                         confidence=0.5, lift=2.9)])
        s.publish(ANALYTICS_ASSOCIATIONS.name, [segmenter_event(rules, event_type="AssociationRulesChanged", key="chain",
                                                                occurred_at=DAY, identity=f"rules/{prefix}")])
        yield s
    finally:
        notifier.stop()
        profile.stop()


def test_a_sale_matching_a_basket_rule_gets_the_consequent_offered_once_even_if_redelivered(stack: Stack) -> None:
    member = treated("cx")
    stack.enrol(member, "push")
    sale = stack.sale(member, ["diapers", "milk"], DAY)
    stack.ring(sale)
    offers = stack.offers(member, expected=1)
    assert len(offers) == 1, offers
    offer = offers[0]
    assert offer["event_type"] == "OfferIssued"
    payload = offer["payload"]
    assert payload["products"] == ["beer"] and payload["channel"] == "push" and payload["withheld"] is False
    assert payload["reason"]["trigger"] == "cross_sell" and payload["reason"]["rule_antecedents"] == ["diapers"]
    assert payload["reason"]["source_event_id"] == str(sale.event_id)
    assert "beer" in payload["text"] and "10%" in payload["text"]
    assert payload["valid_from"].startswith("2026-06-01T12:00") and payload["valid_to"].startswith("2026-06-08")

    # The same sale delivered again (a till's retry) is skipped; a second trip with the same basket while
    # the offer is valid is a duplicate, counted as such.
    before = stack.report()["suppressed"].get("duplicate", 0)
    stack.ring(sale, stack.sale(member, ["diapers"], DAY + timedelta(hours=1)))
    assert len(stack.offers(member, expected=1)) == 1
    assert stack.report()["suppressed"].get("duplicate", 0) == before + 1


def test_no_consent_for_the_channel_or_not_enrolled_means_no_offer(stack: Stack) -> None:
    email_only, stranger = treated("em"), treated("st")
    stack.enrol(email_only, "email")  # the cross-sell campaign uses push
    before = stack.report()["suppressed"].get("no_consent", 0)
    stack.ring(stack.sale(email_only, ["diapers"], DAY), stack.sale(stranger, ["diapers"], DAY))
    assert stack.report()["suppressed"].get("no_consent", 0) == before + 2
    assert stack.offers(email_only, expected=0, timeout=2) == [] and stack.offers(stranger, expected=0, timeout=2) == []
    # member-profile's first profile of the email member is a welcome by email, which they agreed to.
    welcome = stack.offers(email_only, expected=1, campaign="auto-welcome", timeout=30)
    assert [(w["payload"]["channel"], w["payload"]["reason"]["trigger"]) for w in welcome] == [("email", "welcome")]
    assert stack.offers(stranger, expected=0, timeout=2, campaign="auto-welcome") == [], "no consent: no welcome"


def test_quiet_hours_in_the_stores_time_zone_and_the_daily_cap(stack: Stack) -> None:
    night_owl, tokyo, busy = treated("qh"), treated("tk"), treated("cap")
    for member in (night_owl, tokyo, busy):
        stack.enrol(member, "push")
    before = stack.report()["suppressed"]
    late = DAY.replace(hour=23, minute=30)
    stack.ring(stack.sale(night_owl, ["diapers"], late),  # 23:30 UTC at s1 (UTC): quiet
               stack.sale(tokyo, ["diapers"], DAY.replace(hour=1), store="tokyo-1"))  # 10:00 in Tokyo: fine
    # Three trips in one day, three different rules: the third offer is over the daily cap of 2.
    stack.ring(stack.sale(busy, ["diapers"], DAY), stack.sale(busy, ["bread"], DAY + timedelta(hours=1)),
               stack.sale(busy, ["pasta"], DAY + timedelta(hours=2)))
    after = stack.report()["suppressed"]
    assert after.get("quiet_hours", 0) == before.get("quiet_hours", 0), "deferred, not dropped"
    assert after.get("daily_cap", 0) == before.get("daily_cap", 0) + 1
    # triggered in quiet hours: out when they end, 08:00 the next morning at s1, valid from then
    [deferred] = stack.offers(night_owl, expected=1)
    assert deferred["payload"]["products"] == ["beer"]
    next_morning = (late + timedelta(days=1)).replace(hour=8, minute=0)
    assert datetime.fromisoformat(deferred["payload"]["valid_from"]) == next_morning
    assert datetime.fromisoformat(deferred["occurred_at"]) == next_morning
    assert [o["payload"]["products"] for o in stack.offers(tokyo, expected=1)] == [["beer"]]
    assert sorted(o["payload"]["products"][0] for o in stack.offers(busy, expected=2)) == ["beer", "butter"]


def test_low_stock_products_are_not_offered(stack: Stack) -> None:
    """Held from the report to the next receipt in event time, whatever order the topics are read in."""
    member = treated("ls")
    stack.enrol(member, "push")
    low = LowStock(store_id="s2", sku="sauce", on_hand=1, on_order=0, forecast_daily=4.0, days_of_cover=0.25,
                   as_of=DAY - timedelta(hours=3))
    stack.publish(INVENTORY_LOW_STOCK.name, [low_stock_detected(low, source="replenishment", identity=f"s2/sauce/{member}")])
    before = stack.report()["suppressed"].get("low_stock", 0)
    stack.ring(stack.sale(member, ["pasta"], DAY, store="s2"))
    assert stack.report()["suppressed"].get("low_stock", 0) == before + 1
    assert stack.offers(member, expected=0, timeout=2) == []
    # a sale from before the report, read after it (replenishment ran ahead): the sauce was there then
    stack.ring(stack.sale(member, ["pasta"], DAY - timedelta(days=1), store="s2"))
    assert [o["payload"]["products"] for o in stack.offers(member, expected=1)] == [["sauce"]]
    # a week later the sauce is still not back: still held (no time-to-live); then the goods arrive
    stack.ring(stack.sale(member, ["pasta"], DAY + timedelta(days=8), store="s2"))
    assert stack.report()["suppressed"].get("low_stock", 0) == before + 2
    receipt = GoodsReceipt(receipt_id=f"gr-{member}", store_id="s2", received_at=DAY + timedelta(days=9),
                           lines=[ReceiptLine(sku="sauce", quantity=48)])
    stack.publish(INVENTORY_RECEIPTS.name, [goods_received(receipt, source="replenishment")])
    # a sale from before the goods came, read after them: still held at its time
    stack.ring(stack.sale(member, ["pasta"], DAY + timedelta(days=8, hours=12), store="s2"))
    assert stack.report()["suppressed"].get("low_stock", 0) == before + 3
    stack.ring(stack.sale(member, ["pasta"], DAY + timedelta(days=10), store="s2"))
    assert [o["payload"]["products"] for o in stack.offers(member, expected=2)] == [["sauce"], ["sauce"]]
    assert stack.report()["suppressed"].get("low_stock", 0) == before + 3


def test_control_members_get_a_withheld_record_and_redemptions_feed_the_report(stack: Stack) -> None:
    buyer, control = treated("rd"), controlled(f"ctl{stack.prefix}")
    for member in (buyer, control):
        stack.enrol(member, "push")
    stack.ring(stack.sale(buyer, ["bread"], DAY), stack.sale(control, ["bread"], DAY))
    withheld = stack.offers(control, expected=1)
    assert [o["event_type"] for o in withheld] == ["OfferWithheld"]
    assert withheld[0]["payload"]["withheld"] is True and withheld[0]["payload"]["text"] == ""
    before = stack.report()
    # Both come back two days later and buy the butter (the control member never saw an offer).
    stack.ring(stack.sale(buyer, ["butter", "eggs"], DAY + timedelta(days=2), price="3.00"),
               stack.sale(control, ["butter"], DAY + timedelta(days=2), price="3.00"))
    after = stack.report()
    assert after["redeemed"]["treated"] == before["redeemed"]["treated"] + 1
    assert after["redeemed"]["control"] == before["redeemed"]["control"] + 1
    assert Decimal(after["revenue"]["treated"]) == Decimal(before["revenue"]["treated"]) + Decimal("3.00")
    assert after["withheld"] >= 1 and after["sent"] >= 1
    assert after["conversion"]["treated"] is not None and after["conversion"]["control"] is not None
    low, high = after["uplift_ci95"]
    assert low <= after["uplift"] <= high


def test_dormant_wake_up_and_tier_upgrade_offers(stack: Stack) -> None:
    sleeper, climber = treated("dm", "auto-dormant-wakeup"), treated("tu", "auto-tier-upgrade")
    stack.enrol(sleeper, "email")
    stack.enrol(climber, "email")
    change = MemberSegmentChanged(member_id=sleeper, dimension="persona", old="regular", new="dormant",
                                  reason="42 days overdue by their own rhythm", as_of=DAY,
                                  current={"persona": "dormant", "value_tier": "at_risk"})
    stack.publish(MEMBER_SEGMENTS.name, [segmenter_event(change, event_type="MemberSegmentChanged", key=sleeper,
                                                         occurred_at=DAY, identity=f"seg/{sleeper}")])
    upgrade = TierChanged(member_id=climber, old_tier="member", new_tier="silver", rolling_spend=Decimal("600"),
                          effective_at=DAY)
    stack.publish(MEMBER_TIER_CHANGED.name, [member_event(upgrade, event_type="TierChanged", member_id=climber,
                                                          occurred_at=DAY, source="member-profile",
                                                          identity=f"tier/{climber}")])
    woken = stack.offers(sleeper, expected=1, campaign="auto-dormant-wakeup")
    assert len(woken) == 1 and woken[0]["payload"]["reason"]["trigger"] == "dormant_wakeup"
    assert woken[0]["payload"]["channel"] == "email" and "miss you" in woken[0]["payload"]["text"]
    thanked = stack.offers(climber, expected=1, campaign="auto-tier-upgrade")
    assert len(thanked) == 1 and thanked[0]["payload"]["reason"]["segment"] == "silver"


def test_a_tier_thanks_read_after_the_members_later_sales_is_redeemed_by_the_first_of_them(stack: Stack) -> None:
    """The tier event arrives on its own topic after the sales that followed it were applied: the offer
    is redeemed by the same sale as if it had been there first (the earliest one inside its window)."""
    climber = treated("lt", "auto-tier-upgrade")
    stack.enrol(climber, "email")
    at = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
    before = stack.sale(climber, ["tea"], at - timedelta(hours=2))  # before the upgrade: cannot redeem it
    first, second = (stack.sale(climber, ["tea"], at + timedelta(days=d), price="4.00") for d in (1, 2))
    stack.ring(before, first, second)
    upgrade = TierChanged(member_id=climber, old_tier="member", new_tier="silver", rolling_spend=Decimal("600"),
                          effective_at=at)
    stack.publish(MEMBER_TIER_CHANGED.name, [member_event(upgrade, event_type="TierChanged", member_id=climber,
                                                          occurred_at=at, source="member-profile",
                                                          identity=f"tier/{climber}")])
    [thanks] = stack.offers(climber, expected=1, campaign="auto-tier-upgrade")
    answer = httpx.get(f"{stack.notifier.url}/v1/members/{climber}/offers", headers=MARKETING, timeout=10).json()
    held = next(o for o in answer["offers"] if o["offer_id"] == thanks["payload"]["offer_id"])
    assert (held["redeemed_by"], Decimal(held["redeemed_revenue"])) == (first.sale_id, Decimal("4.00")), held


def test_a_code_scanned_before_its_offer_was_decided_redeems_it_when_the_offer_comes(stack: Stack) -> None:
    """A forwarded code scanned at an anonymous till, read before the tier event that makes its offer
    (offer ids are derived from the trigger, so a replay's recorded codes name offers to come): the
    till sale redeems the offer, by its code, once the offer is decided."""
    climber = treated("lc", "auto-tier-upgrade")
    stack.enrol(climber, "email")
    at = datetime(2026, 7, 10, 12, 0, tzinfo=UTC)  # after the tier thanks above, before the run-out days below
    upgrade = member_event(TierChanged(member_id=climber, old_tier="member", new_tier="silver",
                                       rolling_spend=Decimal("600"), effective_at=at),
                           event_type="TierChanged", member_id=climber, occurred_at=at, source="member-profile",
                           identity=f"tier/{climber}")
    code = Proposal("auto-tier-upgrade", climber, "tier_upgrade", (), None, at, "", str(upgrade.event_id)).offer_id
    till = Sale(sale_id=f"fwd-{climber}", store_id="s1", terminal_id="t1", member_id=None,
                occurred_at=at + timedelta(days=1), currency="EUR",
                lines=[SaleLine(sku="wine", quantity=1, unit_price=Decimal("6.00"), offer_code=code),
                       SaleLine(sku="bread", quantity=1, unit_price=Decimal("1.00"))])
    stack.ring(till)
    stack.publish(MEMBER_TIER_CHANGED.name, [upgrade])
    [thanks] = stack.offers(climber, expected=1, campaign="auto-tier-upgrade")
    assert thanks["payload"]["offer_id"] == code
    answer = httpx.get(f"{stack.notifier.url}/v1/members/{climber}/offers", headers=MARKETING, timeout=10).json()
    held = next(o for o in answer["offers"] if o["offer_id"] == code)
    assert (held["redeemed_by"], Decimal(held["redeemed_revenue"])) == (till.sale_id, Decimal("6.00")), held


def test_erased_members_are_never_contacted(stack: Stack) -> None:
    member = treated("er")
    stack.enrol(member, "push")
    erased = MemberErased(member_id=member, erased_at=DAY - timedelta(days=1), requested_by="abc")
    stack.publish(MEMBER_ERASED.name, [member_event(erased, event_type="MemberErased", member_id=member,
                                                    occurred_at=erased.erased_at, source="member-profile",
                                                    identity=f"erase/{member}")])
    before = stack.report()["suppressed"].get("erased", 0)
    stack.ring(stack.sale(member, ["diapers"], DAY))
    assert stack.report()["suppressed"].get("erased", 0) == before + 1
    assert stack.offers(member, expected=0, timeout=2) == []


def test_a_poison_record_goes_to_the_dlq_and_the_consumer_goes_on(stack: Stack) -> None:
    member = treated("px")
    stack.enrol(member, "push")
    stack.publish(ANALYTICS_ASSOCIATIONS.name, [], raw=[b"{not json", b'{"event_id": "x"}'])
    dead = asyncio.run(read_topic(stack.endpoints.kafka_bootstrap, ANALYTICS_ASSOCIATIONS.dlq(stack.prefix),
                                  expected=2, timeout=20))
    assert len(dead) == 2
    assert all(dict(r.headers).get("dlq.reason") for r in dead), [r.headers for r in dead]
    stack.ring(stack.sale(member, ["diapers"], DAY))  # the chain's rules still apply
    assert len(stack.offers(member, expected=1)) == 1


def test_campaigns_crud_preview_and_bad_definitions_name_the_field(stack: Stack) -> None:
    url = stack.notifier.url
    good = {"name": "Gold wake-up", "trigger": "dormant_wakeup", "channel": "email", "tiers": ["gold"],
            "template": "{discount}% off until {valid_to}", "discount_percent": "20", "control_share": 0.2,
            "budget": 100}
    assert httpx.put(f"{url}/v1/campaigns/gold-wake", json=good, headers=OPS).status_code == 403
    created = httpx.put(f"{url}/v1/campaigns/gold-wake", json=good, headers=MARKETING)
    assert created.status_code == 201 and created.json()["status"] == "draft", created.text
    assert httpx.put(f"{url}/v1/campaigns/gold-wake", json=good, headers=MARKETING).status_code == 200
    started = httpx.post(f"{url}/v1/campaigns/gold-wake/start", headers=MARKETING).json()
    assert started["status"] == "running"
    preview = httpx.post(f"{url}/v1/campaigns/gold-wake/preview", headers=MARKETING)
    assert preview.status_code == 200 and preview.json()["audience"] == 0, preview.text  # nobody is gold here
    everyone = httpx.put(f"{url}/v1/campaigns/all-push", headers=MARKETING, json={**good, "tiers": [], "budget": None})
    assert everyone.status_code == 201
    wide = httpx.post(f"{url}/v1/campaigns/all-push/preview", headers=MARKETING).json()
    assert wide["audience"] > 0 and wide["samples"] and "20% off" in wide["samples"][0]["text"]
    assert httpx.post(f"{url}/v1/campaigns/gold-wake/stop", headers=MARKETING).json()["status"] == "stopped"
    assert httpx.get(f"{url}/v1/campaigns/nope/report", headers=MARKETING).status_code == 404

    for change, field in (({"template": "Hello {first_name}"}, "template"), ({"channel": "fax"}, "channel"),
                          ({"starts_at": "2026-07-01T00:00:00Z", "ends_at": "2026-06-01T00:00:00Z"}, "ends_at"),
                          ({"control_share": 0.75}, "control_share")):
        bad = httpx.put(f"{url}/v1/campaigns/bad-one", json={**good, **change}, headers=MARKETING)
        assert bad.status_code == 422, bad.text
        assert bad.json()["detail"][0]["field"] == field, bad.json()


def test_run_out_reminder_before_the_predicted_repurchase_in_event_time(stack: Stack) -> None:
    regular, passer_by = treated("ro", "auto-run-out"), treated("pb")
    stack.enrol(regular, "push")
    start = DAY + timedelta(days=30)  # clear of the other tests' days
    stack.ring(*(stack.sale(regular, ["coffee"], start + timedelta(days=d)) for d in (0, 7, 14)))  # due day 21
    stack.ring(stack.sale(passer_by, ["tea"], start + timedelta(days=17)))  # event time moves on: not yet
    assert stack.offers(regular, expected=0, timeout=2, campaign="auto-run-out") == []
    stack.ring(stack.sale(passer_by, ["tea"], start + timedelta(days=19, hours=6)))  # two days before: remind
    stack.ring(stack.sale(passer_by, ["tea"], start + timedelta(days=20, hours=6)))  # and only once
    reminders = stack.offers(regular, expected=1, campaign="auto-run-out")
    assert [r["payload"]["products"] for r in reminders] == [["coffee"]], reminders
    assert reminders[0]["payload"]["reason"]["trigger"] == "run_out"


def test_birthday_offer_when_event_time_enters_the_members_birthday(stack: Stack) -> None:
    celebrant = treated("bd", "auto-birthday")
    stack.enrol(celebrant, "email", birth_date="1990-10-20")  # only MM-DD reaches the notifier
    passer_by = treated("bdp")
    stack.ring(stack.sale(passer_by, ["tea"], datetime(2026, 10, 19, 11, 0, tzinfo=UTC)))
    assert stack.offers(celebrant, expected=0, timeout=2, campaign="auto-birthday") == []
    stack.ring(stack.sale(passer_by, ["tea"], datetime(2026, 10, 20, 9, 30, tzinfo=UTC)))  # the day begins
    stack.ring(stack.sale(passer_by, ["tea"], datetime(2026, 10, 20, 15, 0, tzinfo=UTC)))  # same day: nothing new
    greetings = stack.offers(celebrant, expected=1, campaign="auto-birthday")
    assert len(greetings) == 1, greetings
    assert greetings[0]["payload"]["reason"]["trigger"] == "birthday" and "birthday" in greetings[0]["payload"]["text"]
    assert greetings[0]["payload"]["channel"] == "email"


def test_after_sale_care_follows_a_purchase_of_a_configured_category_days_later(stack: Stack) -> None:
    url = stack.notifier.url
    care = {"name": "Jeans care", "trigger": "after_sale", "channel": "push", "categories": ["JEANS"],
            "delay_days": 3, "control_share": 0.0, "discount_percent": "0",
            "template": "Are you happy with your {product}? Tell us, and get tips to keep it like new."}
    assert httpx.put(f"{url}/v1/campaigns/jeans-care", json=care, headers=MARKETING).status_code == 201
    assert httpx.post(f"{url}/v1/campaigns/jeans-care/start", headers=MARKETING).json()["status"] == "running"
    from crm_shared.events import Product, product_listed

    stack.publish(CATALOG_PRODUCTS.name, [product_listed(Product(sku="jeans-501", category="JEANS", brand="Levi"),
                                                          source="test", occurred_at=DAY)])
    buyer = treated("as", "jeans-care")
    stack.enrol(buyer, "push")
    bought_at = datetime(2026, 11, 2, 11, 0, tzinfo=UTC)
    stack.ring(stack.sale(buyer, ["jeans-501", "socks"], bought_at))
    stack.ring(stack.sale(treated("asp"), ["tea"], bought_at + timedelta(days=2)))  # event time: too early
    assert stack.offers(buyer, expected=0, timeout=2, campaign="jeans-care") == []
    stack.ring(stack.sale(treated("asp"), ["tea"], bought_at + timedelta(days=3, hours=1)))
    follow_up = stack.offers(buyer, expected=1, campaign="jeans-care")
    assert [(o["payload"]["reason"]["trigger"], o["payload"]["products"]) for o in follow_up] == [
        ("after_sale", ["jeans-501"])]
    assert follow_up[0]["payload"]["text"].startswith("Are you happy with your jeans-501?")
    bad = httpx.put(f"{url}/v1/campaigns/no-categories", json={**care, "categories": []}, headers=MARKETING)
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "categories", bad.text


def test_new_arrival_goes_to_members_whose_habits_match_when_event_time_reaches_the_launch(stack: Stack) -> None:
    from crm_shared.events import MemberProfileUpdated, Product, VisitRhythm, product_listed

    fan, other = treated("na", "auto-new-arrival"), treated("nb", "auto-new-arrival")
    for member in (fan, other):
        stack.enrol(member, "push")
    launch = datetime(2026, 11, 10, 8, 0, tzinfo=UTC)

    def profile(member: str, categories: dict[str, float]) -> Any:
        updated = MemberProfileUpdated(
            member_id=member, as_of=launch - timedelta(days=5), first_purchase_at=None, last_purchase_at=None,
            recency_days=None, frequency=5, returns=0, monetary=Decimal("100"), average_basket_value=Decimal("20"),
            average_basket_size=3.0, returns_rate=0.0, discount_share=0.0, preferred_store="s1", hour_of_day={},
            weekday={}, visit_rhythm=VisitRhythm(intervals=4, mean_days=7.0, spread_days=1.0, days_overdue=None),
            tier="member", points_balance=0, categories=categories)
        return member_event(updated, event_type="MemberProfileUpdated", member_id=member, occurred_at=updated.as_of,
                            source="member-profile", identity=f"profile/{member}/{uuid.uuid4()}")

    stack.publish(MEMBER_PROFILES.name, [profile(fan, {"COFFEE": 0.6, "BAKERY": 0.2}), profile(other, {"BAKERY": 0.9})])
    stack.publish(CATALOG_PRODUCTS.name, [product_listed(Product(sku="brew-new", category="COFFEE", brand="Roastery",
                                                                 launched_at=launch), source="test", occurred_at=DAY)])
    stack.ring(stack.sale(treated("nap"), ["tea"], launch + timedelta(hours=2)))
    arrivals = stack.offers(fan, expected=1, campaign="auto-new-arrival")
    assert [(o["payload"]["reason"]["trigger"], o["payload"]["products"]) for o in arrivals] == [
        ("new_arrival", ["brew-new"])]
    assert stack.offers(other, expected=0, timeout=2, campaign="auto-new-arrival") == []


def test_an_offer_code_on_a_sale_line_redeems_and_a_return_of_the_offered_product_undoes_it(stack: Stack) -> None:
    member = treated("oc")
    stack.enrol(member, "push")
    at = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    stack.ring(stack.sale(member, ["diapers"], at))
    [offer] = stack.offers(member, expected=1)
    code = offer["payload"]["offer_id"]
    till = Sale(sale_id=f"code-{member}", store_id="s1", terminal_id="t1", member_id=None,  # a forwarded code
                occurred_at=at + timedelta(days=1), currency="EUR",
                lines=[SaleLine(sku="beer", quantity=2, unit_price=Decimal("1.50"), offer_code=code)])
    stack.ring(till)

    def held() -> dict[str, Any]:
        answer = httpx.get(f"{stack.notifier.url}/v1/members/{member}/offers", headers=MARKETING, timeout=10).json()
        return next(o for o in answer["offers"] if o["offer_id"] == code)

    assert held()["redeemed_at"] is not None and Decimal(held()["redeemed_revenue"]) == Decimal("3.00")
    # a product redemption by the member, then its return: the redemption is undone
    member2 = treated("rt")
    stack.enrol(member2, "push")
    stack.ring(stack.sale(member2, ["bread"], at))
    bought = stack.sale(member2, ["butter"], at + timedelta(days=1), price="2.50")
    stack.ring(bought)
    answer = httpx.get(f"{stack.notifier.url}/v1/members/{member2}/offers", headers=MARKETING, timeout=10).json()
    assert [o["redeemed_by"] for o in answer["offers"]] == [bought.sale_id]
    back = Sale(sale_id=f"ret-{member2}", store_id="s1", terminal_id="t1", member_id=member2, kind="return",
                original_sale_id=bought.sale_id, occurred_at=at + timedelta(days=2), currency="EUR",
                lines=[SaleLine(sku="butter", quantity=1, unit_price=Decimal("2.50"))])
    stack.ring(back)
    answer = httpx.get(f"{stack.notifier.url}/v1/members/{member2}/offers", headers=MARKETING, timeout=10).json()
    assert [(o["redeemed_at"], o["redeemed_by"]) for o in answer["offers"]] == [(None, None)]


def test_a_started_campaign_keeps_its_control_share_and_channel(stack: Stack) -> None:
    url = stack.notifier.url
    body = {"name": "Fixed arms", "trigger": "dormant_wakeup", "channel": "email", "control_share": 0.2,
            "template": "{discount}% off until {valid_to}"}
    assert httpx.put(f"{url}/v1/campaigns/fixed-arms", json=body, headers=MARKETING).status_code == 201
    assert httpx.put(f"{url}/v1/campaigns/fixed-arms", json={**body, "control_share": 0.3},
                     headers=MARKETING).status_code == 200, "a draft may still change"
    httpx.post(f"{url}/v1/campaigns/fixed-arms/start", headers=MARKETING)
    moved = httpx.put(f"{url}/v1/campaigns/fixed-arms", json={**body, "control_share": 0.05}, headers=MARKETING)
    assert moved.status_code == 409 and moved.json()["detail"][0]["field"] == "control_share", moved.text
    renamed = httpx.put(f"{url}/v1/campaigns/fixed-arms", json={**body, "control_share": 0.3, "name": "Fixed arms 2"},
                        headers=MARKETING)
    assert renamed.status_code == 200, renamed.text


def test_welcome_still_goes_out_when_a_segment_change_arrived_before_the_first_profile(stack: Stack) -> None:
    newcomer = treated("wl", "auto-welcome")
    stack.enrol(newcomer, "email")
    early = MemberSegmentChanged(member_id=newcomer, dimension="value_tier", old=None, new="bronze",
                                 reason="first visit", as_of=DAY, current={"value_tier": "bronze"})
    stack.publish(MEMBER_SEGMENTS.name, [segmenter_event(early, event_type="MemberSegmentChanged", key=newcomer,
                                                         occurred_at=DAY, identity=f"seg/{newcomer}")])
    stack.ring(stack.sale(newcomer, ["tea"], DAY + timedelta(hours=3)))  # member-profile publishes the first profile
    welcome = stack.offers(newcomer, expected=1, campaign="auto-welcome", timeout=30)
    assert [w["payload"]["reason"]["trigger"] for w in welcome] == ["welcome"]


def test_a_learned_cross_sell_campaign_chooses_among_the_strongest_rules_and_learns_from_the_outcome(
        stack: Stack) -> None:
    url = stack.notifier.url
    body = {"name": "Learned cross-sell", "trigger": "cross_sell", "channel": "sms", "chooser": "learned",
            "candidates": 2, "control_share": 0.0, "template": "{discount}% off {product}", "min_lift": 1.0}
    assert httpx.put(f"{url}/v1/campaigns/learned-x", json=body, headers=MARKETING).status_code == 201
    httpx.post(f"{url}/v1/campaigns/learned-x/start", headers=MARKETING)
    member = treated("lc", "learned-x")
    stack.enrol(member, "sms")
    at = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    stack.ring(stack.sale(member, ["diapers", "bread"], at))  # two rules match: beer (0.6) and butter (0.5)
    [offer] = stack.offers(member, expected=1, campaign="learned-x")
    chosen = offer["payload"]["products"][0]
    assert chosen in {"beer", "butter"} and "chosen by the learned model" in offer["payload"]["reason"]["detail"]
    stack.ring(stack.sale(member, [chosen], at + timedelta(days=1)))  # redeemed: the model learns a "yes"
    answer = httpx.get(f"{url}/v1/members/{member}/offers", headers=MARKETING, timeout=10).json()
    mine = next(o for o in answer["offers"] if o["campaign_id"] == "learned-x")
    assert mine["redeemed_at"] is not None and mine["learned"] is True and mine["features"]["tier"] >= 0
    httpx.post(f"{url}/v1/campaigns/learned-x/stop", headers=MARKETING)
