"""The notifier SIGKILLed mid-stream and restarted: no offer lost, none decided twice.

1,000 sales, each a different (member, rule) pair, so each calls for exactly one cross-sell offer (or
its withheld twin). The notifier is killed once it has decided some of them, then restarted on the
same schema and consumer groups. Afterwards the database holds exactly 1,000 decisions, and
`marketing.offers.v1`, read plainly, carries exactly 1,000 distinct offers; a record the relay sent
again after the kill carries the same event id (consumers dedupe on it).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from crm_shared.events import (
    AssociationRulesChanged,
    MemberContactability,
    RuleDocument,
    Sale,
    SaleLine,
    contactability_event,
    sale_recorded,
    segmenter_event,
)
from crm_shared.kafka import consumer_lag
from crm_shared.serde import encode
from crm_shared.testing import StackEndpoints, read_topic, start_service
from crm_shared.topics import ANALYTICS_ASSOCIATIONS, MARKETING_OFFERS, MEMBER_CONSENTS, POS_SALES

pytestmark = pytest.mark.integration

MARKETING = {"x-api-key": "dev-marketing"}
MEMBERS, RULES = 50, 20
DAY = datetime(2026, 6, 2, 10, 0, tzinfo=UTC)


def contactability(member: str, *channels: str, at: datetime) -> Any:
    return contactability_event(MemberContactability(member_id=member, as_of=at, enrolled=True, home_store="s1",
                                                     consents={c: True for c in channels}))  # type: ignore[misc]


def decisions(url: str) -> int:
    report = httpx.get(f"{url}/v1/campaigns/auto-cross-sell/report", headers=MARKETING, timeout=10).json()
    return int(report["sent"]) + int(report["withheld"])


def test_sigkill_mid_stream_loses_no_offer_and_decides_none_twice(crm_stack: StackEndpoints, tmp_path) -> None:  # type: ignore[no-untyped-def]
    prefix = f"nk{uuid.uuid4().hex[:6]}."
    notifier = start_service("notifier", crm_stack, tmp_path, prefix=prefix, extra_env={
        "NOTIFIER_SCHEMA_NAME": f"nt_{uuid.uuid4().hex[:8]}",
        "NOTIFIER_TRIGGERS": "cross_sell", "NOTIFIER_DAILY_CAP": "1000", "NOTIFIER_WEEKLY_CAP": "1000",
        "NOTIFIER_CONSUMER_BATCH": "50"})
    try:
        members = [f"k{i:03d}" for i in range(MEMBERS)]
        rules = AssociationRulesChanged(scope="chain", window_start=None, window_end=DAY, baskets=500, min_support=0.01,
                                        min_confidence=0.3, rules=[
                                            RuleDocument(antecedents=[f"a{i}"], consequent=f"b{i}", support=0.02,
                                                         confidence=0.5, lift=2.0) for i in range(RULES)])
        sales = [Sale(sale_id=f"k{n}", store_id="s1", terminal_id="t1", member_id=member,
                      occurred_at=DAY + timedelta(seconds=n), currency="EUR",
                      lines=[SaleLine(sku=f"a{rule}", quantity=1, unit_price=Decimal("1.00"))])
                 for n, (member, rule) in enumerate((m, r) for m in members for r in range(RULES))]

        async def publish() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=crm_stack.kafka_bootstrap)
            await producer.start()
            try:
                for member in members:  # member-profile's consent records, as it publishes them
                    consent = contactability(member, "push", at=DAY - timedelta(days=1))
                    await producer.send(MEMBER_CONSENTS.qualified(prefix), encode(consent), key=member.encode())
                event = segmenter_event(rules, event_type="AssociationRulesChanged", key="chain", occurred_at=DAY,
                                        identity=f"rules/{prefix}")
                await producer.send_and_wait(ANALYTICS_ASSOCIATIONS.qualified(prefix), encode(event), key=b"chain")
                deadline = time.monotonic() + 60  # rules and consents are in the notifier before the sales arrive
                for part, topic in (("rules", ANALYTICS_ASSOCIATIONS.qualified(prefix)),
                                    ("consents", MEMBER_CONSENTS.qualified(prefix))):
                    while (await consumer_lag(crm_stack.kafka_bootstrap, f"{prefix}notifier.{part}",
                                              [topic])).get(topic) != 0:
                        assert time.monotonic() < deadline, f"the notifier did not take the {part} in 60 s"
                        await asyncio.sleep(0.2)
                for sale in sales:
                    recorded = sale_recorded(sale, source="test-till")
                    await producer.send(POS_SALES.qualified(prefix), encode(recorded), key=recorded.key.encode())
                await producer.flush()
            finally:
                await producer.stop()

        asyncio.run(publish())
        deadline = time.monotonic() + 60
        while decisions(notifier.url) < 100 and time.monotonic() < deadline:
            time.sleep(0.05)
        before_kill = decisions(notifier.url)
        notifier.kill()
        assert before_kill < len(sales), "the notifier finished before it could be killed; the drill proves nothing"
        notifier.start()
        deadline = time.monotonic() + 120
        while decisions(notifier.url) < len(sales) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2.0)
        assert decisions(notifier.url) == len(sales), notifier.tail()

        records = asyncio.run(read_topic(crm_stack.kafka_bootstrap, MARKETING_OFFERS.qualified(prefix),
                                         expected=len(sales), timeout=60, settle=2))
        events = [orjson.loads(r.value) for r in records]
        offer_ids = Counter(e["payload"]["offer_id"] for e in events)
        assert len(offer_ids) == len(sales), f"{len(offer_ids)} distinct offers for {len(sales)} sales"
        by_offer = {}
        for event in events:  # a republished record is the same event, never a second decision
            assert by_offer.setdefault(event["payload"]["offer_id"], event["event_id"]) == event["event_id"]
        assert {tuple(e["payload"]["products"]) for e in events} == {(f"b{i}",) for i in range(RULES)}
    finally:
        notifier.stop()
