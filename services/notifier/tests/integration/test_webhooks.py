"""Webhook delivery to a marketing tool, on the real stack with a real HTTP receiver: every sent offer
is posted signed (HMAC-SHA256), a failing tool gets retries with backoff, a refusing one sends the
offer to `marketing.offer_webhooks.dlq` with the reason, and two notifier replicas sharing the work
never post the same offer twice."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from zoneinfo import ZoneInfo

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
from crm_shared.serde import encode
from crm_shared.system import asyncpg_dsn
from crm_shared.testing import StackEndpoints, read_topic, start_service, wait_until_caught_up
from crm_shared.topics import ANALYTICS_ASSOCIATIONS, MARKETING_OFFER_WEBHOOKS_DLQ, MEMBER_CONSENTS, POS_SALES
from notifier.domain import in_control_group

pytestmark = pytest.mark.integration

SECRET = "test-webhook-secret"
DAY = datetime(2026, 6, 3, 10, 0, tzinfo=UTC)


class MarketingTool:
    """A webhook receiver: checks each signature; members named `flaky-*` fail twice before it accepts,
    members named `refused-*` are refused (400) every time."""

    def __init__(self) -> None:
        self.accepted: Counter[str] = Counter()
        self.posts: Counter[str] = Counter()
        self.bad_signatures = 0
        self.lock = threading.Lock()
        tool = self

        class Handler(BaseHTTPRequestHandler):
            # keep-alive like a real tool: an HTTP/1.0 reply closes the connection, and a post racing that
            # close fails in transport and is retried (a second attempt the test did not mean to cause)
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                stamp, signature = self.headers["x-crm-timestamp"], self.headers["x-crm-signature"]
                expected = "sha256=" + hmac.new(SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
                offer_id = self.headers["x-crm-offer-id"]
                member = orjson.loads(body)["payload"]["member_id"]
                with tool.lock:
                    tool.posts[offer_id] += 1
                    attempt = tool.posts[offer_id]
                    if not hmac.compare_digest(signature, expected):
                        tool.bad_signatures += 1
                    if member.startswith("refused-"):
                        status = 400
                    elif member.startswith("flaky-") and attempt <= 2:
                        status = 503
                    else:
                        status = 200
                        tool.accepted[offer_id] += 1
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/offers"

    def __enter__(self) -> MarketingTool:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()


@pytest.fixture
def tool() -> Iterator[MarketingTool]:
    with MarketingTool() as receiver:
        yield receiver


def treated(stem: str) -> str:
    for i in range(1000):
        member = f"{stem}-{uuid.uuid4().hex[:6]}-{i}"
        if not in_control_group(member, "auto-cross-sell", 0.1):
            return member
    raise AssertionError("unreachable")


def diapers(sale_id: str, member: str, at: datetime, store_id: str = "s1") -> Sale:
    return Sale(sale_id=sale_id, store_id=store_id, terminal_id="t1", member_id=member, occurred_at=at, currency="EUR",
                lines=[SaleLine(sku="diapers", quantity=1, unit_price=Decimal("9.99"))])


async def send(bootstrap: str, records: list[tuple[str, bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for topic, key, value in records:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


def ring_after_rules_and_consents(bootstrap: str, prefix: str, members: list[str], sales: list[Sale],
                                  at: datetime) -> None:
    """Push consent for `members` and the chain's rule diapers -> beer, both as of `at`; once the notifier
    has taken them, `sales` on the tills."""
    consents = [contactability_event(MemberContactability(member_id=m, as_of=at - timedelta(days=1), enrolled=True,
                                                          consents={"push": True})) for m in members]
    rules = AssociationRulesChanged(scope="chain", window_start=None, window_end=at, baskets=100, min_support=0.01,
                                    min_confidence=0.3, rules=[RuleDocument(antecedents=["diapers"], consequent="beer",
                                                                            support=0.05, confidence=0.6, lift=2.4)])
    event = segmenter_event(rules, event_type="AssociationRulesChanged", key="chain", occurred_at=at,
                            identity=f"rules/{prefix}")
    asyncio.run(send(bootstrap, [(MEMBER_CONSENTS.qualified(prefix), c.key.encode(), encode(c)) for c in consents]
                     + [(ANALYTICS_ASSOCIATIONS.qualified(prefix), b"chain", encode(event))]))
    for part, topic in (("rules", ANALYTICS_ASSOCIATIONS), ("consents", MEMBER_CONSENTS)):
        wait_until_caught_up(bootstrap, f"{prefix}notifier.{part}", topic.qualified(prefix), timeout=90)
    recorded = [sale_recorded(sale, source="test-till") for sale in sales]
    asyncio.run(send(bootstrap, [(POS_SALES.qualified(prefix), r.key.encode(), encode(r)) for r in recorded]))


def test_offers_are_posted_signed_retried_dead_lettered_and_never_twice_across_replicas(
        crm_stack: StackEndpoints, tool: MarketingTool, tmp_path: Any) -> None:
    prefix = f"nw{uuid.uuid4().hex[:6]}."
    env = {"NOTIFIER_SCHEMA_NAME": f"nw_{uuid.uuid4().hex[:8]}", "NOTIFIER_TRIGGERS": "cross_sell",
           "NOTIFIER_WEBHOOK_URL": tool.url, "NOTIFIER_WEBHOOK_SECRET": SECRET,
           "NOTIFIER_WEBHOOK_RETRY_BASE_SECONDS": "0.2", "NOTIFIER_WEBHOOK_MAX_ATTEMPTS": "4",
           "NOTIFIER_WEBHOOK_IDLE_POLL_SECONDS": "0.1", "NOTIFIER_DAILY_CAP": "100", "NOTIFIER_WEEKLY_CAP": "100"}
    first = start_service("notifier", crm_stack, tmp_path, prefix=prefix, extra_env=env)
    second = start_service("notifier", crm_stack, tmp_path, prefix=prefix, extra_env=env)
    members = [treated("ok") for _ in range(30)] + [treated("flaky") for _ in range(3)] + [treated("refused")]
    try:
        sales = [diapers(f"w{n}", member, DAY + timedelta(minutes=n)) for n, member in enumerate(members)]
        ring_after_rules_and_consents(crm_stack.kafka_bootstrap, prefix, members, sales, DAY)
        deliverable = len(members) - 1
        deadline = time.monotonic() + 90
        while len(tool.accepted) < deliverable and time.monotonic() < deadline:
            time.sleep(0.2)
        dead = asyncio.run(read_topic(crm_stack.kafka_bootstrap, MARKETING_OFFER_WEBHOOKS_DLQ.qualified(prefix),
                                      expected=1, timeout=30, settle=2.0))
        time.sleep(1.0)  # a second post of anything would have arrived by now
        assert len(tool.accepted) == deliverable, (tool.accepted, first.tail(), second.tail())
        assert set(tool.accepted.values()) == {1}, f"an offer was accepted twice: {tool.accepted.most_common(3)}"
        assert tool.bad_signatures == 0
        flaky_posts = [n for offer, n in tool.posts.items() if offer in tool.accepted and n > 1]
        assert sorted(flaky_posts) == [3, 3, 3], "each flaky delivery: two failures, then accepted once"
        assert len(dead) == 1, dead
        failure = orjson.loads(dead[0].value)["payload"]
        assert failure["member_id"].startswith("refused-") and failure["attempts"] == 1
        assert failure["last_error"] == "refused with HTTP 400"
        assert orjson.loads(failure["body"])["payload"]["offer_id"] == failure["offer_id"]
    finally:
        first.stop()
        second.stop()


def zone_at_local_hour(hour: int, now: datetime) -> str:
    """A fixed-offset zone whose local hour is `hour` at `now` (Etc/GMT-3 is UTC+3)."""
    offset = (hour - now.hour + 12) % 24 - 12  # -12..+11
    return "UTC" if offset == 0 else f"Etc/GMT{-offset:+d}"


def test_an_offer_deferred_out_of_quiet_hours_is_posted_when_they_end_not_before(
        crm_stack: StackEndpoints, tool: MarketingTool, tmp_path: Any) -> None:
    """Live traffic: a sale at 23:00 in its store's zone gets an offer valid from 08:00 (quiet hours
    deferred); the tool gets no post before then and the offer waits off the topic, while a sale in a
    store where it is noon is posted and published at once."""
    now = datetime.now(UTC).replace(microsecond=0)
    prefix = f"nq{uuid.uuid4().hex[:6]}."
    schema = f"nq_{uuid.uuid4().hex[:8]}"
    zones = {"night": zone_at_local_hour(23, now), "noon": zone_at_local_hour(12, now)}
    env = {"NOTIFIER_SCHEMA_NAME": schema, "NOTIFIER_TRIGGERS": "cross_sell", "NOTIFIER_WEBHOOK_URL": tool.url,
           "NOTIFIER_WEBHOOK_SECRET": SECRET, "NOTIFIER_WEBHOOK_IDLE_POLL_SECONDS": "0.1",
           "NOTIFIER_DEFERRED_POLL_SECONDS": "0.1", "NOTIFIER_STORE_TIME_ZONES": orjson.dumps(zones).decode()}
    notifier = start_service("notifier", crm_stack, tmp_path, prefix=prefix, extra_env=env)
    night_owl, lunch = treated("owl"), treated("noon")
    try:
        sales = [diapers(f"q{n}-{prefix}", member, now, store_id=store_id)
                 for n, (member, store_id) in enumerate(((night_owl, "night"), (lunch, "noon")))]
        ring_after_rules_and_consents(crm_stack.kafka_bootstrap, prefix, [night_owl, lunch], sales,
                                      now - timedelta(hours=1))
        offers = asyncio.run(read_topic(crm_stack.kafka_bootstrap, f"{prefix}marketing.offers.v1", expected=1,
                                        timeout=60, settle=1.0))
        by_member = {orjson.loads(r.value)["payload"]["member_id"]: orjson.loads(r.value)["payload"] for r in offers}
        assert set(by_member) == {lunch}, (by_member, notifier.tail())

        async def fetch(sql: str) -> list[Any]:
            import asyncpg

            conn = await asyncpg.connect(asyncpg_dsn(crm_stack.database_url))
            try:
                return [tuple(r) for r in await conn.fetch(sql)]
            finally:
                await conn.close()

        held = asyncio.run(fetch(f"SELECT value, not_before FROM {schema}.deferred_offers"))
        assert len(held) == 1, "the night offer is held until quiet hours end"
        by_member[night_owl] = orjson.loads(held[0][0])["payload"]
        assert held[0][1] == datetime.fromisoformat(by_member[night_owl]["valid_from"])
        morning = datetime.fromisoformat(by_member[night_owl]["valid_from"])
        local = now.astimezone(ZoneInfo(zones["night"]))
        assert local.hour == 23 and morning == (local + timedelta(days=1)).replace(hour=8, minute=0, second=0)
        assert timedelta(hours=8) < morning - now <= timedelta(hours=9), "23:xx local: deferred to 08:00"
        assert datetime.fromisoformat(by_member[lunch]["valid_from"]) == now
        deadline = time.monotonic() + 30
        while not tool.accepted and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2.0)  # the sender polls every 0.1 s: a post of the deferred offer would have come by now
        assert set(tool.accepted) == {by_member[lunch]["offer_id"]}, (tool.posts, notifier.tail())
        assert asyncio.run(fetch(f"SELECT offer_id, status, attempts, next_attempt_at FROM {schema}.webhook_deliveries "
                                 "ORDER BY 4")) == [(by_member[lunch]["offer_id"], "delivered", 1, now),
                                                    (by_member[night_owl]["offer_id"], "pending", 0, morning)]
        # still held after many passes of the release (every 0.1 s here), and still off the topic
        time.sleep(1.0)
        assert len(asyncio.run(fetch(f"SELECT 1 FROM {schema}.deferred_offers"))) == 1
        assert len(asyncio.run(read_topic(crm_stack.kafka_bootstrap, f"{prefix}marketing.offers.v1", expected=1,
                                          timeout=10, settle=1.0))) == 1
        report = httpx.get(f"{notifier.url}/v1/campaigns/auto-cross-sell/report",
                           headers={"x-api-key": "dev-marketing"}, timeout=10).json()
        assert (report["sent"], report["waiting_for_quiet_hours_end"]) == (2, 1), report
    finally:
        notifier.stop()
