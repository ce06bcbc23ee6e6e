"""Personal data: it never reaches a log, and an erasure reaches every service's store.

member-profile, the segmenter and the notifier run as processes on the real stack (DEBUG logs).
A member is enrolled with distinctive personal data, looked up, changed, given and refused consent,
buys once (so the segmenter and the notifier hold rows for them), then is erased. Afterwards no
table of any of the three schemas and no Redis key of the run holds any of the personal values,
the segmenter and the notifier hold no row keyed by the member id except their erasure marker,
no record on any topic of the run carries one, and none of the three logs ever contained one.

What erasure means where (README "Security"): member-profile keeps the pseudonymous purchase
history (member id → sales, points, profile aggregates) and blanks the person; the gateway's
ledger and replenishment hold sales by member id only, never a person, and keep them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest
from crm_shared.events import Sale
from crm_shared.processes import ServiceProcess
from crm_shared.replay import replay_kafka
from crm_shared.testing import StackEndpoints, start_service
from crm_shared.topics import BROKER_SENTINEL, all_topic_names
from redis import Redis

pytestmark = pytest.mark.integration

OPS = {"x-api-key": "dev-ops"}
POS = {"x-api-key": "dev-pos-s1"}
MEMBER = f"card-{uuid.uuid4().hex[:8]}"
PERSON = {"given_name": "Zephyrine", "family_name": "Quaxleworth", "email": "zephyrine.q7@example.org",
          "phone": "+44 20 7946 0321", "card_number": "6004009988776", "birth_date": "1961-07-14"}
NEW_EMAIL = "zq.new-address@example.net"
BAD_EMAIL = "zephyrine-at-nowhere"  # refused (422): must not be logged either
# As stored (normalised) and as typed: none may appear anywhere after erasure, nor ever in a log.
PERSONAL_VALUES = ("Zephyrine", "Quaxleworth", "zephyrine.q7", "+442079460321", "7946 0321", "6004009988776",
                   "1961-07-14", "zq.new-address", BAD_EMAIL)


@dataclass
class Services:
    member_profile: ServiceProcess
    segmenter: ServiceProcess
    notifier: ServiceProcess
    schemas: dict[str, str]
    prefix: str
    endpoints: StackEndpoints

    def all(self) -> list[ServiceProcess]:
        return [self.member_profile, self.segmenter, self.notifier]


@pytest.fixture(scope="module")
def services(crm_stack: StackEndpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    prefix = f"er{uuid.uuid4().hex[:6]}."
    logs = tmp_path_factory.mktemp("erasure")
    schemas = {m: f"{m}_{uuid.uuid4().hex[:8]}" for m in ("member_profile", "segmenter", "notifier")}
    common = {"CRM_LOG_LEVEL": "DEBUG"}
    started: list[ServiceProcess] = []
    try:
        def start(module: str, **env: str) -> ServiceProcess:
            process = start_service(module, crm_stack, logs, prefix=prefix, extra_env={
                **common, f"{module.upper()}_SCHEMA_NAME": schemas[module],
                f"{module.upper()}_RELAY_IDLE_POLL_SECONDS": "0.05", **env})
            started.append(process)
            return process

        member_profile = start("member_profile")
        segmenter = start("segmenter")
        notifier = start("notifier")
        yield Services(member_profile, segmenter, notifier, schemas, prefix, crm_stack)
    finally:
        for process in started:
            process.stop()


def wait_for(what: str, check: Callable[[], object], expected: object, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while (found := check()) != expected:
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {found!r}, expected {expected!r}"
        time.sleep(0.3)


def query(services: Services, sql: str, *args: object) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(services.endpoints.database_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


def tables_with_member_rows(services: Services, schema: str) -> dict[str, int]:
    """Every table of the schema with a `member_id` column, and its rows for the member."""
    tables = query(services, "SELECT table_name FROM information_schema.columns "
                             "WHERE table_schema = $1 AND column_name = 'member_id'", schema)
    counts = {}
    for row in tables:
        found = query(services, f'SELECT count(*) AS n FROM "{schema}"."{row["table_name"]}" WHERE member_id = $1',
                      MEMBER)
        if found[0]["n"]:
            counts[row["table_name"]] = found[0]["n"]
    return counts


def personal_values_in_database(services: Services) -> list[str]:
    """`schema.table: value` for every personal value found anywhere in a row of the three schemas."""
    patterns = [f"%{v.lower()}%" for v in PERSONAL_VALUES]
    hits = []
    for schema in services.schemas.values():
        for row in query(services, "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema):
            table = row["table_name"]
            for value, pattern in zip(PERSONAL_VALUES, patterns, strict=True):
                n = query(services, f'SELECT count(*) AS n FROM "{schema}"."{table}" t WHERE lower(t::text) LIKE $1',
                          pattern)[0]["n"]
                if n:
                    hits.append(f"{schema}.{table}: {value}")
    return hits


def personal_values_in_redis(services: Services) -> list[str]:
    redis = Redis.from_url(services.endpoints.redis_url)
    hits = []
    for key in redis.scan_iter(match=f"{services.prefix}*", count=1000):
        if redis.type(key) == b"string":
            value = (redis.get(key) or b"").decode(errors="replace").lower()
            hits += [f"{key!r}: {v}" for v in PERSONAL_VALUES if v.lower() in value]
    redis.close()
    return hits


def personal_values_on_topics(services: Services) -> tuple[int, list[str]]:
    """Every record of every topic of the run (and DLQ), read to the end: (records read, hits)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def run() -> tuple[int, list[str]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=services.endpoints.kafka_bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            topics = [n for n in all_topic_names(services.prefix) if n != BROKER_SENTINEL.qualified(services.prefix)]
            partitions = [TopicPartition(name, p) for name in topics for p in consumer.partitions_for_topic(name) or ()]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            read, hits, quiet = 0, [], 0
            while quiet < 3:  # three empty fetches in a row: the end of every partition
                batch = await consumer.getmany(timeout_ms=300, max_records=5000)
                quiet = 0 if batch else quiet + 1
                for records in batch.values():
                    for record in records:
                        read += 1
                        text = (record.value or b"").decode(errors="replace").lower()
                        hits += [f"{record.topic}: {v}" for v in PERSONAL_VALUES if v.lower() in text]
            return read, hits
        finally:
            await consumer.stop()

    return asyncio.run(run())


def test_personal_data_is_never_logged_and_erasure_reaches_every_store(services: Services) -> None:
    mp = httpx.Client(base_url=services.member_profile.url, timeout=30)
    enrolled = mp.post("/v1/members", json={"member_id": MEMBER, "home_store": "s1", **PERSON,
                                            "consents": [{"channel": "email", "granted": True, "source": "s1"}]},
                       headers=POS)
    assert enrolled.status_code == 201, enrolled.text
    assert mp.post("/v1/members", json={"member_id": f"{MEMBER}-2", "home_store": "s1",
                                        "email": PERSON["email"]}, headers=OPS).status_code == 409
    bad = mp.patch(f"/v1/members/{MEMBER}", json={"email": BAD_EMAIL}, headers=POS)
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "email"
    for params in ({"phone": PERSON["phone"]}, {"email": PERSON["email"]}, {"card_number": PERSON["card_number"]}):
        found = mp.post("/v1/members/lookup", json=params, headers=POS)
        assert found.status_code == 200 and found.json()["member_id"] == MEMBER, found.text
    assert mp.patch(f"/v1/members/{MEMBER}", json={"email": NEW_EMAIL}, headers=POS).status_code == 200
    for channel, granted in (("sms", True), ("email", False)):
        changed = mp.put(f"/v1/members/{MEMBER}/consents/{channel}", json={"granted": granted, "source": "s1"},
                         headers=POS)
        assert changed.status_code == 200, changed.text
    assert mp.get(f"/v1/members/{MEMBER}", headers={"x-api-key": "dev-marketing"}).json()["personal"]["email"] \
        == NEW_EMAIL.lower()

    sale = Sale.model_validate({"sale_id": f"er-{MEMBER}", "store_id": "s1", "terminal_id": "t1", "member_id": MEMBER,
                                "occurred_at": datetime(2011, 3, 1, 10, 0, tzinfo=UTC).isoformat(), "currency": "GBP",
                                "kind": "sale", "lines": [{"sku": "85123A", "quantity": 2, "unit_price": "2.55"}]})
    asyncio.run(replay_kafka([sale], bootstrap=services.endpoints.kafka_bootstrap, topic_prefix=services.prefix,
                             progress=False))
    segmenter, notifier = services.schemas["segmenter"], services.schemas["notifier"]
    wait_for("the segmenter's row", lambda: "members" in tables_with_member_rows(services, segmenter), True)
    wait_for("the notifier's row", lambda: "members" in tables_with_member_rows(services, notifier), True)
    assert personal_values_in_database(services), "the scan finds nothing even before erasure: it is broken"

    erased = mp.delete(f"/v1/members/{MEMBER}", headers=OPS)
    assert erased.status_code == 200, erased.text
    wait_for("the segmenter's erasure", lambda: tables_with_member_rows(services, segmenter), {"erased_members": 1})
    wait_for("the notifier's erasure", lambda: tables_with_member_rows(services, notifier), {"erased_members": 1})

    person = mp.get(f"/v1/members/{MEMBER}", headers=OPS).json()
    assert person["personal"] is None and person["erased_at"] and not person["consents"], person
    assert personal_values_in_database(services) == []
    assert personal_values_in_redis(services) == []
    records, on_topics = personal_values_on_topics(services)
    assert records >= 4 and on_topics == []  # the sale, the profile, the erasure, segments... and no person
    # the pseudonymous purchase history stays in member-profile, for the aggregates
    assert mp.get(f"/v1/members/{MEMBER}/history", headers=OPS).json()["purchases"]
    mp.close()

    for process in services.all():
        log_text = Path(process.log_path).read_text(errors="replace")
        assert '"level":"debug"' in log_text or '"level":"info"' in log_text, f"{process.log_path}: no log captured"
        leaked = [v for v in PERSONAL_VALUES if v.lower() in log_text.lower()]
        assert leaked == [], f"{process.log_path} holds personal data: {leaked}"
