"""pos-gateway against the real broker, PostgreSQL and Redis: what a terminal and ops see."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest
from crm_shared.testing import StackEndpoints, read_topic

from .conftest import GatewayUnderTest, a_sale, now_plus, start_gateway

pytestmark = pytest.mark.integration


def event_ids(records: list) -> Counter[str]:
    return Counter(orjson.loads(r.value)["event_id"] for r in records)


def test_a_sale_is_published_exactly_once_and_a_resubmission_gets_the_original_answer(gateway: GatewayUnderTest) -> None:
    body = a_sale("inv-1001")
    first = gateway.post(body, key="dev-pos-s1")
    assert first.status_code == 202, first.text
    assert first.json()["status"] == "accepted"
    again = gateway.post(body, key="dev-pos-s1")
    assert again.status_code == 200
    assert again.json() == first.json()

    records = asyncio.run(read_topic(gateway.bootstrap, gateway.sales_topic, expected=1))
    mine = [r for r in records if orjson.loads(r.value)["payload"]["sale_id"] == "inv-1001"]
    assert len(mine) == 1
    event = orjson.loads(mine[0].value)
    assert event["event_id"] == first.json()["event_id"]
    assert event["key"] == "m1" and mine[0].key == b"m1"
    assert event["payload"]["lines"][1] == {"sku": "71053", "description": "WHITE METAL LANTERN", "quantity": 6,
                                            "unit_price": "3.39", "discount": "0.50"}

    stored = httpx.get(f"{gateway.url}/v1/sales/s1/inv-1001", headers={"x-api-key": "dev-pos-s1"}).json()
    assert stored["total"] == "35.14"  # 6 × 2.55 + 6 × 3.39 − 0.50
    assert stored["published"] is True


def test_same_sale_id_with_different_contents_is_a_conflict_naming_the_field(gateway: GatewayUnderTest) -> None:
    body = a_sale("inv-1002")
    assert gateway.post(body).status_code == 202
    changed = a_sale("inv-1002")
    changed["lines"][0]["quantity"] = 7
    response = gateway.post(changed)
    assert response.status_code == 409
    assert response.json()["detail"][0]["field"] == "lines.0.quantity"
    other_till = {**body, "terminal_id": "till-2"}
    clash = gateway.post(other_till)
    assert clash.status_code == 409
    assert clash.json()["detail"][0]["field"] == "sale_id"
    assert "till-1" in clash.json()["detail"][0]["reason"]


def test_keys_and_roles(gateway: GatewayUnderTest) -> None:
    body = a_sale(store="s9")
    assert httpx.post(gateway.url + "/v1/sales", json=body).status_code == 401
    assert gateway.post(body, key="no-such-key").status_code == 401
    other_store = gateway.post(body, key="dev-pos-s1")
    assert other_store.status_code == 403 and other_store.json()["detail"][0]["field"] == "store_id"
    assert gateway.post(body, key="dev-marketing").status_code == 403
    assert gateway.post(body, key="dev-supplier-acme").status_code == 403
    bearer = httpx.post(gateway.url + "/v1/sales", json=body, headers={"authorization": "Bearer dev-pos-s9"})
    assert bearer.status_code == 202
    assert httpx.get(f"{gateway.url}/v1/sales/s9/{body['sale_id']}", headers={"x-api-key": "dev-pos-s1"}).status_code == 403
    missing = httpx.get(f"{gateway.url}/v1/sales/s9/nope", headers={"x-api-key": "dev-ops"})
    assert missing.status_code == 404 and missing.json()["detail"][0]["field"] == "sale_id"


def bad_input_cases() -> list[tuple[str, dict, int, str]]:
    def with_line(**changes: object) -> dict:
        body = a_sale()
        body["lines"][0].update(changes)
        return body

    def without(field: str) -> dict:
        body = a_sale()
        body.pop(field)
        return body

    return [
        ("missing store_id", without("store_id"), 422, "store_id"),
        ("missing lines", without("lines"), 422, "lines"),
        ("extra field", {**a_sale(), "coupon": "X"}, 422, "coupon"),
        ("quantity zero", with_line(quantity=0), 422, "lines.0.quantity"),
        ("negative quantity", with_line(quantity=-2), 422, "lines.0.quantity"),
        ("quantity as string", with_line(quantity="6"), 422, "lines.0.quantity"),
        ("five decimals", with_line(unit_price="2.55555"), 422, "lines.0.unit_price"),
        ("float money", with_line(unit_price=2.55), 422, "lines.0.unit_price"),
        ("negative price", with_line(unit_price="-1.00"), 422, "lines.0.unit_price"),
        ("discount over line", with_line(discount="100.00"), 422, "lines.0.discount"),
        ("unknown currency", {**a_sale(), "currency": "XYZ"}, 422, "currency"),
        ("no time zone", {**a_sale(), "occurred_at": "2010-12-01T09:30:00"}, 422, "occurred_at"),
        ("two days ahead", {**a_sale(), "occurred_at": now_plus(48).isoformat()}, 422, "occurred_at"),
        ("year 1", {**a_sale(), "occurred_at": "0001-01-01T00:00:00+05:00"}, 422, "occurred_at"),
        ("empty lines", {**a_sale(), "lines": []}, 422, "lines"),
        ("NUL in sku", with_line(sku="85\u0000123"), 422, "lines.0.sku"),
        ("original on a sale", {**a_sale(), "original_sale_id": "x1"}, 422, "original_sale_id"),
        ("array body", [a_sale()], 422, "body"),  # type: ignore[list-item]
    ]


@pytest.mark.parametrize(("case", "body", "status", "field"), bad_input_cases(), ids=[c[0] for c in bad_input_cases()])
def test_bad_input_is_refused_naming_the_field_and_records_nothing(gateway: GatewayUnderTest, case: str, body: dict,
                                                                  status: int, field: str) -> None:
    response = gateway.post(body)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert field in [d["field"] for d in detail], detail
    assert all(d["reason"] for d in detail)
    if isinstance(body, dict) and isinstance(body.get("sale_id"), str) and isinstance(body.get("store_id"), str):
        lookup = httpx.get(f"{gateway.url}/v1/sales/{body['store_id']}/{body['sale_id']}", headers={"x-api-key": "dev-ops"})
        assert lookup.status_code == 404


def test_transport_level_refusals(gateway: GatewayUnderTest) -> None:
    headers = {"x-api-key": "dev-ops"}
    as_json = {**headers, "content-type": "application/json"}
    bad_json = httpx.post(gateway.url + "/v1/sales", content=b'{"sale_id": ', headers=as_json)
    assert bad_json.status_code == 400 and bad_json.json()["detail"][0]["field"] == "body"
    as_text = {**headers, "content-type": "text/plain"}
    wrong_type = httpx.post(gateway.url + "/v1/sales", content=orjson.dumps(a_sale()), headers=as_text)
    assert wrong_type.status_code == 415 and wrong_type.json()["detail"][0]["field"] == "content-type"
    huge = a_sale()
    huge["lines"][0]["description"] = "x" * 300
    huge["lines"] = huge["lines"][:1] * 2000
    too_big = httpx.post(gateway.url + "/v1/sales", content=orjson.dumps(huge) + b" " * 400_000,
                         headers={**headers, "content-type": "application/json"})
    assert too_big.status_code == 413


def test_a_return_cannot_give_back_more_than_was_sold(gateway: GatewayUnderTest) -> None:
    assert gateway.post(a_sale("inv-2001")).status_code == 202
    line = {"sku": "85123A", "quantity": 4, "unit_price": "2.55"}
    first = a_sale("ret-2001a", kind="return", original_sale_id="inv-2001", lines=[line])
    assert gateway.post(first).status_code == 202
    too_many = a_sale("ret-2001b", kind="return", original_sale_id="inv-2001", lines=[{**line, "quantity": 3}])
    refused = gateway.post(too_many)
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["field"] == "lines.0.quantity"
    assert "only 2" in refused.json()["detail"][0]["reason"]
    not_sold = a_sale("ret-2001c", kind="return", original_sale_id="inv-2001",
                      lines=[{"sku": "22423", "quantity": 1, "unit_price": "12.75"}])
    assert gateway.post(not_sold).json()["detail"][0]["field"] == "lines.0.sku"
    rest = a_sale("ret-2001d", kind="return", original_sale_id="inv-2001", lines=[{**line, "quantity": 2}])
    assert gateway.post(rest).status_code == 202
    stored = httpx.get(f"{gateway.url}/v1/sales/s1/ret-2001d", headers={"x-api-key": "dev-ops"}).json()
    assert stored["total"] == "-5.10"


def test_batch_gives_a_result_per_sale(gateway: GatewayUnderTest) -> None:
    good, dup = a_sale("b-1"), a_sale("b-2")
    assert gateway.post(dup).status_code == 202
    bad = a_sale("b-3")
    bad["lines"][0]["unit_price"] = 1.5
    other_store = a_sale("b-4", store="s2")
    response = gateway.post({"sales": [good, dup, bad, other_store, good]}, key="dev-pos-s1", path="/v1/sales/batch")
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["accepted", "duplicate", "rejected", "forbidden", "duplicate"]
    assert [r["http_status"] for r in results] == [202, 200, 422, 403, 200]
    assert results[2]["errors"][0]["field"] == "lines.0.unit_price"
    assert results[0]["event_id"] == results[4]["event_id"]
    too_many = gateway.post({"sales": [a_sale() for _ in range(501)]}, path="/v1/sales/batch")
    assert too_many.status_code == 422 and too_many.json()["detail"][0]["field"] == "sales"


def test_live_figures_are_in_event_time_and_count_each_sale_once(gateway: GatewayUnderTest) -> None:
    when = datetime(2011, 3, 4, 10, 15, tzinfo=UTC)
    bodies = [a_sale(f"live-{i}", store="live-store", member=f"lm{i}", when=when,
                     lines=[{"sku": "22720", "quantity": 2, "unit_price": "4.95"}]) for i in range(5)]
    bodies.append(a_sale("live-r", store="live-store", kind="return", when=when,
                         lines=[{"sku": "22720", "quantity": 1, "unit_price": "4.95"}]))
    for body in bodies:
        assert gateway.post(body).status_code == 202
    figures = _wait_for_live(gateway, "live-store", sales=5, returns=1)
    store = figures["stores"][0]
    assert figures["as_of"].startswith("2011-03-04T10:15")
    assert (store["sales"], store["returns"], store["revenue"]) == (5, 1, "44.5500")
    assert figures["top_skus"][0] == {"sku": "22720", "quantity": 9}

    # The same events delivered again (a broker redelivery or a republish) change nothing.
    from aiokafka import AIOKafkaProducer

    records = asyncio.run(read_topic(gateway.bootstrap, gateway.sales_topic, expected=1))
    mine = [r for r in records if orjson.loads(r.value)["payload"]["store_id"] == "live-store"]

    async def redeliver() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=gateway.bootstrap)
        await producer.start()
        for record in mine:
            await producer.send_and_wait(gateway.sales_topic, record.value, key=record.key)
        await producer.stop()

    asyncio.run(redeliver())
    time.sleep(3)
    again = httpx.get(f"{gateway.url}/v1/stats/live", params={"store_id": "live-store"}, headers={"x-api-key": "dev-ops"}).json()
    assert again["stores"][0]["sales"] == 5 and again["stores"][0]["revenue"] == "44.5500"
    pos_view = httpx.get(f"{gateway.url}/v1/stats/live", headers={"x-api-key": "dev-pos-live-store"}).json()
    assert [s["store_id"] for s in pos_view["stores"]] == ["live-store"]


def _wait_for_live(gateway: GatewayUnderTest, store: str, *, sales: int, returns: int = 0, timeout: float = 30) -> dict:
    """The store's live figures once they count `sales` sales and `returns` returns (or at the timeout).
    A return is keyed by its store and the sales by their members: they reach the consumer in any order."""
    deadline = time.monotonic() + timeout
    while True:
        figures = httpx.get(f"{gateway.url}/v1/stats/live", params={"store_id": store},
                            headers={"x-api-key": "dev-ops"}).json()
        counted = figures["stores"][0] if figures["stores"] else None
        if (counted and counted["sales"] >= sales and counted["returns"] >= returns) or time.monotonic() > deadline:
            return figures
        time.sleep(0.3)


def test_a_poison_message_goes_to_the_dead_letter_topic_and_the_consumer_goes_on(gateway: GatewayUnderTest) -> None:
    from aiokafka import AIOKafkaProducer

    async def inject() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=gateway.bootstrap)
        await producer.start()
        await producer.send_and_wait(gateway.sales_topic, b"not json at all", key=b"poison-1")
        await producer.send_and_wait(gateway.sales_topic, orjson.dumps({"event_id": "x"}), key=b"poison-2")
        await producer.stop()

    asyncio.run(inject())
    after = a_sale("after-poison", store="poison-store", when=datetime(2011, 5, 1, 12, tzinfo=UTC))
    assert gateway.post(after).status_code == 202
    dead = asyncio.run(read_topic(gateway.bootstrap, gateway.dlq_topic, expected=2))
    by_key = {r.key: dict(r.headers) for r in dead}
    assert b"not valid JSON" in by_key[b"poison-1"]["dlq.reason"]
    assert b"breaks the contract" in by_key[b"poison-2"]["dlq.reason"]
    assert by_key[b"poison-1"]["dlq.source"].startswith(gateway.sales_topic.encode())
    figures = _wait_for_live(gateway, "poison-store", sales=1)
    assert figures["stores"][0]["sales"] == 1


def test_health_readiness_metrics_and_openapi(gateway: GatewayUnderTest) -> None:
    assert httpx.get(gateway.url + "/healthz").json()["status"] == "ok"
    ready = httpx.get(gateway.url + "/readyz").json()
    assert ready == {"status": "ready", "checks": {"database": "ok", "cache": "ok", "broker": "ok"}}
    metrics = httpx.get(gateway.url + "/metrics").text
    assert 'crm_http_requests_total{method="POST",route="/v1/sales"' in metrics
    spec = httpx.get(gateway.url + "/openapi.json").json()
    body_schema = spec["paths"]["/v1/sales"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body_schema == {"$ref": "#/components/schemas/Sale"}
    assert "SaleLine" in spec["components"]["schemas"]


def test_a_members_sales_reach_the_topic_in_the_order_they_were_accepted_with_concurrent_writers(
        crm_stack: StackEndpoints, tmp_path: Path) -> None:
    """Two group commits in flight with room for 3 sales each: an HTTP batch of a member's sales spans
    several transactions. Before the writer kept a key's sales out of concurrent transactions, a later
    transaction could commit first and its (higher) outbox ids be published before the earlier ones."""
    under_test = start_gateway(crm_stack, tmp_path, POS_GATEWAY_WRITER_CONCURRENCY="2",
                               POS_GATEWAY_WRITER_MAX_BATCH="3")
    lanes, members_per_lane, posts, per_post = 4, 4, 10, 24
    posted: dict[str, list[str]] = {}

    async def lane(number: int) -> None:
        members = [f"m{number}-{i}" for i in range(members_per_lane)]
        async with httpx.AsyncClient(base_url=under_test.url, timeout=60) as client:
            for post in range(posts):
                sales = [a_sale(f"o{number}-{post}-{i}", member=members[i % members_per_lane])
                         for i in range(per_post)]
                response = await client.post("/v1/sales/batch", json={"sales": sales}, headers={"x-api-key": "dev-ops"})
                assert response.status_code == 200 and {r["http_status"] for r in response.json()["results"]} == {202}
                for sale in sales:
                    posted.setdefault(sale["member_id"], []).append(sale["sale_id"])

    async def all_lanes() -> None:
        await asyncio.gather(*(lane(n) for n in range(lanes)))

    try:
        asyncio.run(all_lanes())
        total = lanes * posts * per_post
        records = asyncio.run(read_topic(under_test.bootstrap, under_test.sales_topic, expected=total, timeout=60))
        published: dict[str, list[str]] = {}
        for record in sorted(records, key=lambda r: (r.partition, r.offset)):
            payload = orjson.loads(record.value)["payload"]
            published.setdefault(payload["member_id"], []).append(payload["sale_id"])
        assert len(records) == total and set(published) == set(posted)
        out_of_order = [member for member, sale_ids in posted.items() if published[member] != sale_ids]
        assert not out_of_order, f"{len(out_of_order)} members' sales published out of order, e.g. {out_of_order[0]}"
    finally:
        under_test.process.stop()
