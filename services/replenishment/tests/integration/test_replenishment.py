"""replenishment against the real broker and PostgreSQL: stock from sales, orders raised once per need
whatever the redeliveries and crashes, the purchase-order lifecycle, supplier isolation, bad input."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from crm_shared.datasets.online_retail import load_sales
from crm_shared.events import Product, Sale
from crm_shared.kafka import consumer_lag
from crm_shared.processes import ServiceProcess
from crm_shared.replay import publish_catalog, replay_kafka
from crm_shared.supplier_terms import products_from_sales
from crm_shared.system import consumer_counters
from crm_shared.testing import REPO_ROOT, StackEndpoints, read_topic, start_service
from crm_shared.topics import CATALOG_PRODUCTS, INVENTORY_LOW_STOCK, INVENTORY_RECEIPTS, POS_SALES, SUPPLIER_REORDERS
from replenishment.edifact import parse_order_lines

pytestmark = pytest.mark.integration

SLICE = REPO_ROOT / "deploy" / "demo-data" / "online_retail_2010-12.csv.gz"
OPS = {"x-api-key": "dev-ops"}
SUP_A = {"x-api-key": "dev-supplier-sup-a"}
SUP_B = {"x-api-key": "dev-supplier-sup-b"}


def caught_up(bootstrap: str, prefix: str, name: str, topic: str, timeout: float = 90) -> None:
    group, qualified = f"{prefix}replenishment.{name}", f"{prefix}{topic}"
    deadline = time.monotonic() + timeout
    while asyncio.run(consumer_lag(bootstrap, group, [qualified])).get(qualified) != 0:
        assert time.monotonic() < deadline, f"{group} did not catch up within {timeout}s"
        time.sleep(0.3)


def start(crm_stack: StackEndpoints, tmp: Path, prefix: str, schema: str, **env: str) -> ServiceProcess:
    return start_service("replenishment", crm_stack, tmp, prefix=prefix,
                         extra_env={"REPLENISHMENT_SCHEMA_NAME": schema, **env})


def sale(sale_id: str, when: datetime, lines: dict[str, int], *, store: str = "s1", kind: str = "sale") -> Sale:
    return Sale.model_validate({"sale_id": sale_id, "store_id": store, "terminal_id": "t1", "occurred_at": when.isoformat(),
                                "currency": "GBP", "kind": kind,
                                "lines": [{"sku": sku, "quantity": q, "unit_price": "1.00"} for sku, q in lines.items()]})


CATALOG = [
    Product(sku="A", supplier_id="sup-a", unit_cost="0.60", pack_size=6, min_order_quantity=12, lead_time_days=2,
            shelf_capacity=500),
    Product(sku="B", supplier_id="sup-a", unit_cost="1.10", pack_size=1, min_order_quantity=1, lead_time_days=3),
    Product(sku="C", supplier_id="sup-b", unit_cost="2.00", pack_size=10, min_order_quantity=10, lead_time_days=1),
]


def steady_sales(days: int) -> list[Sale]:
    """Steady demand at store s1 (10 A, 4 B, 5 C, 3 D a day), from Monday 3 Jan 2011. D has no
    supplier terms in the catalog: it is forecast but never ordered."""
    start_day = datetime(2011, 1, 3, 10, 0, tzinfo=UTC)
    return [sale(f"d{d}", start_day + timedelta(days=d), {"A": 10, "B": 4, "C": 5, "D": 3}) for d in range(days)]


def test_stock_orders_lifecycle_and_supplier_isolation(crm_stack: StackEndpoints, tmp_path: Path) -> None:
    prefix, schema = f"rp{uuid.uuid4().hex[:6]}.", f"replenishment_{uuid.uuid4().hex[:8]}"
    bootstrap = crm_stack.kafka_bootstrap
    service = start(crm_stack, tmp_path, prefix, schema)
    url = service.url
    try:
        asyncio.run(publish_catalog(CATALOG, bootstrap=bootstrap, topic_prefix=prefix, progress=False))
        caught_up(bootstrap, prefix, "catalog", CATALOG_PRODUCTS.name)
        sales = steady_sales(21)
        # Three weeks at once (one batch), then the next day. Needs are decided sale by sale, and each
        # day's first sale closes the ordering cycle of the day before, inside a batch as between two.
        asyncio.run(replay_kafka(sales[:20], bootstrap=bootstrap, topic_prefix=prefix, progress=False))
        caught_up(bootstrap, prefix, "sales", POS_SALES.name)
        asyncio.run(replay_kafka(sales[20:], bootstrap=bootstrap, topic_prefix=prefix, progress=False))
        caught_up(bootstrap, prefix, "sales", POS_SALES.name)

        a = httpx.get(f"{url}/v1/stock/s1/A", headers=OPS).json()
        assert a["on_hand"] == -210 and a["negative"] is True and a["sold"] == 210
        assert a["forecast_daily"] == pytest.approx(10, abs=0.5)  # steady demand learned
        assert a["reorder_point"] >= 20 and a["supplier_id"] == "sup-a"
        assert a["on_hand"] + a["on_order"] > a["reorder_point"]  # what was ordered covers it
        # D is never ordered (no supplier terms): it stays below its reorder point.
        below = httpx.get(f"{url}/v1/stock/s1", params={"below": "reorder_point"}, headers=OPS).json()
        assert [(item["sku"], item["supplier_id"]) for item in below["items"]] == [("D", None)]
        chain = httpx.get(f"{url}/v1/stock", params={"below": "reorder_point"}, headers=OPS).json()
        assert [(row["store_id"], row["skus"]) for row in chain["stores"]] == [("s1", 1)]

        # The needs of A, B and C became one order per supplier × store × cycle when their cycle closed:
        # every one of the 20 days closed before the last one, none of them on the last (still open) day.
        listed = httpx.get(f"{url}/v1/orders", params={"limit": 100}, headers=OPS).json()["orders"]
        orders = asyncio.run(read_topic(bootstrap, SUPPLIER_REORDERS.qualified(prefix), expected=len(listed),
                                        timeout=30, settle=2.0))
        documents = [orjson.loads(r.value) for r in orders]
        assert sorted(d["payload"]["po_id"] for d in documents) == sorted(o["po_id"] for o in listed)
        by_supplier = defaultdict(list)
        for document in documents:
            by_supplier[document["payload"]["supplier_id"]].append(document["payload"])
        assert set(by_supplier) == {"sup-a", "sup-b"}
        cycles = {day for orders_of in by_supplier.values() for day in (o["cycle"] for o in orders_of)}
        assert cycles == {(sales[0].occurred_at + timedelta(days=d)).date().isoformat() for d in range(20)}
        for orders_of in by_supplier.values():
            assert len({o["cycle"] for o in orders_of}) == len(orders_of), "two orders of one supplier in one cycle"
        need_ids = [need for d in documents for line in d["payload"]["lines"] for need in [line["need_id"], *line["also_fills"]]]
        assert len(need_ids) == len(set(need_ids)), "a need appears on two order lines"
        for payload in by_supplier["sup-a"]:
            for line in payload["lines"]:
                if line["sku"] == "A":
                    assert line["quantity"] % 6 == 0 and line["quantity"] >= 12  # whole packs, at least the MOQ

        # The whole stream delivered again, then the service SIGKILLed and restarted: nothing new.
        asyncio.run(replay_kafka(sales, bootstrap=bootstrap, topic_prefix=prefix, progress=False))
        caught_up(bootstrap, prefix, "sales", POS_SALES.name)
        service.kill()
        service = start(crm_stack, tmp_path, prefix, schema)
        url = service.url
        asyncio.run(replay_kafka(sales[-3:], bootstrap=bootstrap, topic_prefix=prefix, progress=False))
        caught_up(bootstrap, prefix, "sales", POS_SALES.name)
        again = asyncio.run(read_topic(bootstrap, SUPPLIER_REORDERS.qualified(prefix), expected=len(orders),
                                       timeout=30, settle=2.0))
        assert sorted(orjson.loads(r.value)["event_id"] for r in again) == sorted(d["event_id"] for d in documents)
        assert httpx.get(f"{url}/v1/stock/s1/A", headers=OPS).json()["on_hand"] == -210

        order_a = by_supplier["sup-a"][0]
        po = order_a["po_id"]
        # Supplier isolation: sup-b neither sees nor acknowledges sup-a's order.
        assert httpx.get(f"{url}/v1/orders/{po}", headers=SUP_B).status_code == 403
        refused = httpx.post(f"{url}/v1/suppliers/orders/{po}/ack", json={"decision": "accepted"}, headers=SUP_B)
        assert refused.status_code == 403 and refused.json()["detail"][0]["field"] == "po_id"
        mine = httpx.get(f"{url}/v1/suppliers/me/stock", headers=SUP_B).json()
        assert {item["sku"] for item in mine["items"]} == {"C"}
        caught_up(bootstrap, prefix, "sell-through", POS_SALES.name)
        through = httpx.get(f"{url}/v1/suppliers/me/sell-through", headers=SUP_B).json()
        assert {d["sku"] for d in through["days"]} == {"C"} and sum(d["sold"] for d in through["days"]) == 105
        assert httpx.get(f"{url}/v1/suppliers/me/orders", headers=SUP_A).json()["orders"]
        assert httpx.get(f"{url}/v1/stock/s1/A", headers={"x-api-key": "dev-supplier-sup-a"}).status_code == 403

        # EDIFACT ORDERS D.96A parses back to the same lines.
        edifact = httpx.get(f"{url}/v1/orders/{po}/edifact", headers=SUP_A)
        assert edifact.status_code == 200 and "ORDERS:D:96A:UN" in edifact.text
        assert parse_order_lines(edifact.text) == [(line["sku"], line["quantity"]) for line in order_a["lines"]]

        # Lifecycle: accepted, shipped, received in part, then more than ordered (accepted, flagged), closed.
        ack = httpx.post(f"{url}/v1/suppliers/orders/{po}/ack", json={"decision": "accepted"}, headers=SUP_A)
        assert ack.status_code == 200 and ack.json()["status"] == "acknowledged"
        assert httpx.post(f"{url}/v1/suppliers/orders/{po}/ship", json={}, headers=SUP_A).json()["status"] == "shipped"
        ordered = {line["sku"]: line["quantity"] for line in order_a["lines"]}
        sku, quantity = next(iter(ordered.items()))
        before = httpx.get(f"{url}/v1/stock/s1/{sku}", headers=OPS).json()
        on_order_before = before["on_order"]
        received_at = (sales[-1].occurred_at + timedelta(hours=1)).isoformat()
        first = httpx.post(f"{url}/v1/receipts", headers=OPS, json={
            "receipt_id": "r1", "store_id": "s1", "po_id": po, "received_at": received_at,
            "lines": [{"sku": sku, "quantity": quantity - 1}]})
        assert first.status_code == 201 and first.json()["status"] == "partially_received"
        assert first.json()["over_delivered"] is False
        after_first = httpx.get(f"{url}/v1/stock/s1/{sku}", headers=OPS).json()
        assert after_first["on_hand"] == before["on_hand"] + quantity - 1
        assert after_first["on_order"] == on_order_before - (quantity - 1)
        assert after_first["received"] == quantity - 1
        lines_after_first = {line["sku"]: line["received"] for line in
                             httpx.get(f"{url}/v1/orders/{po}", headers=OPS).json()["lines"]}
        assert lines_after_first == {s: (quantity - 1 if s == sku else 0) for s in ordered}
        rest = [{"sku": s, "quantity": q} for s, q in ordered.items() if s != sku] + [{"sku": sku, "quantity": 5}]
        second = httpx.post(f"{url}/v1/receipts", headers=OPS, json={
            "receipt_id": "r2", "store_id": "s1", "po_id": po, "received_at": received_at, "lines": rest})
        assert second.status_code == 201, second.text
        assert second.json()["status"] == "received" and second.json()["over_delivered"] is True
        assert second.json()["over_delivered_units"] == {sku: 4}
        assert {line["sku"]: line["received"] for line in httpx.get(f"{url}/v1/orders/{po}", headers=OPS).json()["lines"]} \
            == {s: (quantity + 4 if s == sku else q) for s, q in ordered.items()}
        repeat = httpx.post(f"{url}/v1/receipts", headers=OPS, json={
            "receipt_id": "r2", "store_id": "s1", "po_id": po, "received_at": received_at, "lines": rest})
        assert repeat.json()["already_recorded"] is True
        assert httpx.get(f"{url}/v1/stock/s1/{sku}", headers=OPS).json()["received"] == quantity + 4
        assert httpx.post(f"{url}/v1/orders/{po}/close", headers=OPS).json()["status"] == "closed"
        late_ack = httpx.post(f"{url}/v1/suppliers/orders/{po}/ack", json={"decision": "rejected"}, headers=SUP_A)
        assert late_ack.status_code == 409 and late_ack.json()["detail"][0]["field"] == "status"
        # Goods arriving after the order was closed are physical stock: booked, flagged, no on-order release.
        before_late = httpx.get(f"{url}/v1/stock/s1/{sku}", headers=OPS).json()
        late = httpx.post(f"{url}/v1/receipts", headers=OPS, json={
            "receipt_id": "r3", "store_id": "s1", "po_id": po, "received_at": received_at,
            "lines": [{"sku": sku, "quantity": 2}]})
        assert late.status_code == 201, late.text
        assert (late.json()["status"], late.json()["over_delivered"], late.json()["over_delivered_units"]) == (
            "closed", True, {sku: 2})
        after_late = httpx.get(f"{url}/v1/stock/s1/{sku}", headers=OPS).json()
        assert after_late["on_hand"] == before_late["on_hand"] + 2
        assert after_late["on_order"] == before_late["on_order"]
        receipts = asyncio.run(read_topic(bootstrap, INVENTORY_RECEIPTS.qualified(prefix), expected=3, timeout=20))
        assert len(receipts) == 3

        # Overdue: every open order once event time is 4 days on (lead times are 1-3 days), not the closed one.
        asyncio.run(replay_kafka([sale("later", sales[-1].occurred_at + timedelta(days=4), {"D": 1}),
                                  sale("other-store", sales[-1].occurred_at, {"C": 1}, store="s2")],
                                 bootstrap=bootstrap, topic_prefix=prefix, progress=False))
        caught_up(bootstrap, prefix, "sales", POS_SALES.name)
        overdue = httpx.get(f"{url}/v1/orders/overdue", headers=OPS).json()["orders"]
        assert {o["supplier_id"] for o in overdue} == {"sup-a", "sup-b"} and all(o["overdue"] for o in overdue)
        assert {o["po_id"] for o in overdue} == {o["po_id"] for o in listed} - {po}

        # Stock count: on hand set to what was counted, the difference booked as shrinkage.
        counted = httpx.post(f"{url}/v1/stock/counts", headers=OPS, json={
            "count_id": "c1", "store_id": "s1", "sku": "C", "counted": 7, "counted_at": received_at}).json()
        c = httpx.get(f"{url}/v1/stock/s1/C", headers=OPS).json()
        assert c["on_hand"] == 7 and c["shrinkage"] == counted["shrinkage"] == counted["expected"] - 7
        assert c["negative"] is False
        # Count ids are per store: s2's "c1" is its own count; a repeat answers the record; another body is 409.
        body = {"count_id": "c1", "store_id": "s2", "sku": "C", "counted": 0, "counted_at": received_at}
        other = httpx.post(f"{url}/v1/stock/counts", headers=OPS, json=body).json()
        assert (other["store_id"], other["shrinkage"], other["already_recorded"]) == ("s2", -1, False)
        assert httpx.post(f"{url}/v1/stock/counts", headers=OPS, json=body).json()["already_recorded"] is True
        assert httpx.get(f"{url}/v1/stock/s2/C", headers=OPS).json()["on_hand"] == 0
        assert httpx.get(f"{url}/v1/stock/s1/C", headers=OPS).json()["on_hand"] == 7
        differs = httpx.post(f"{url}/v1/stock/counts", headers=OPS, json={**body, "counted": 5})
        assert differs.status_code == 409 and differs.json()["detail"][0]["field"] == "count_id"

        # Low stock was announced for the skus whose cover ran out.
        low = asyncio.run(read_topic(bootstrap, INVENTORY_LOW_STOCK.qualified(prefix), expected=4, timeout=20))
        assert {orjson.loads(r.value)["payload"]["sku"] for r in low} == {"A", "B", "C", "D"}

        # Bad input: 4xx naming the field.
        def refusal(response: httpx.Response) -> tuple[int, str]:
            return response.status_code, response.json()["detail"][0]["field"]

        base = {"receipt_id": "r9", "store_id": "s1", "received_at": received_at}
        assert refusal(httpx.post(f"{url}/v1/receipts", headers=OPS, json={
            **base, "lines": [{"sku": "A", "quantity": -3}]})) == (422, "lines.0.quantity")
        assert refusal(httpx.post(f"{url}/v1/receipts", headers=OPS, json={
            **base, "store_id": "nowhere", "lines": [{"sku": "A", "quantity": 3}]})) == (404, "store_id")
        assert refusal(httpx.post(f"{url}/v1/receipts", headers=OPS, json={
            **base, "lines": [{"sku": "NOPE", "quantity": 3}]})) == (422, "lines.sku")
        assert refusal(httpx.get(f"{url}/v1/stock/s1/NOPE", headers=OPS)) == (404, "sku")
        assert refusal(httpx.get(f"{url}/v1/stock/s1", params={"below": "shelf"}, headers=OPS)) == (422, "query.below")
        assert refusal(httpx.post(f"{url}/v1/stock/counts", headers=OPS, json={
            "count_id": "c2", "store_id": "s1", "sku": "A", "counted": -1, "counted_at": received_at})) == (422, "counted")
        assert httpx.get(f"{url}/v1/stock/s1/A", headers={"x-api-key": "dev-pos-s2"}).status_code == 403
    finally:
        service.stop()


def batch_stock(sales: list[Sale]) -> dict[tuple[str, str], int]:
    on_hand: dict[tuple[str, str], int] = defaultdict(int)
    for s in sales:
        for line in s.lines:
            on_hand[(s.store_id, line.sku)] += line.quantity if s.kind == "return" else -line.quantity
    return on_hand


async def fetch(database_url: str, sql: str) -> list[Any]:
    import asyncpg
    from crm_shared.system import asyncpg_dsn

    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


async def net_sold(database_url: str, schema: str) -> dict[tuple[str, str], int]:
    """Units sold less units returned per store × SKU, from the sell-through table (`daily_sales`)."""
    rows = await fetch(database_url, f'SELECT store_id, sku, sum(sold - returned) AS net FROM "{schema}".daily_sales '
                                     "GROUP BY store_id, sku HAVING sum(sold - returned) <> 0")
    return {(r["store_id"], r["sku"]): int(r["net"]) for r in rows}


async def order_ids(database_url: str, schema: str) -> set[str]:
    """Every purchase order raised, from the `purchase_orders` table."""
    return {r["po_id"] for r in await fetch(database_url, f'SELECT po_id FROM "{schema}".purchase_orders')}


def test_killed_mid_batch_gives_the_batch_stock_and_one_order_per_need(crm_stack: StackEndpoints,
                                                                       tmp_path: Path) -> None:
    """A month of real Online Retail sales (20,000 lines), SIGKILLed mid-stream, restarted, delivered twice:
    stock and sell-through (each its own consumer group) as the batch computation gives them."""
    sales = load_sales(SLICE)[0]
    catalog = products_from_sales(sales)
    prefix, schema = f"rk{uuid.uuid4().hex[:6]}.", f"replenishment_{uuid.uuid4().hex[:8]}"
    bootstrap = crm_stack.kafka_bootstrap
    asyncio.run(publish_catalog(catalog, bootstrap=bootstrap, topic_prefix=prefix, progress=False))
    asyncio.run(replay_kafka(sales, bootstrap=bootstrap, topic_prefix=prefix, progress=False))
    service = start(crm_stack, tmp_path, prefix, schema, REPLENISHMENT_CONSUMER_BATCH="200")
    applied: list[float] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # kill it once it has applied some sales but not all
        metrics = httpx.get(f"{service.url}/metrics").text
        applied = [float(line.split()[-1]) for line in metrics.splitlines()
                   if line.startswith("crm_consumer_events_applied_total") and f"{prefix}replenishment.sales" in line]
        if applied and applied[0] > 0:
            break
        time.sleep(0.05)
    service.kill()
    assert applied and 0 < applied[0] < len(sales), f"killed at {applied}: the drill needs a partial state"
    service = start(crm_stack, tmp_path, prefix, schema)
    try:
        caught_up(bootstrap, prefix, "sales", POS_SALES.name, timeout=120)
        asyncio.run(replay_kafka(sales, bootstrap=bootstrap, topic_prefix=prefix, progress=False))
        caught_up(bootstrap, prefix, "sales", POS_SALES.name, timeout=120)
        caught_up(bootstrap, prefix, "sell-through", POS_SALES.name, timeout=120)
        expected = batch_stock(sales)
        busiest = sorted(expected, key=lambda k: expected[k])[:25] + [k for k in expected if k[0] != "or-united-kingdom"][:25]
        for store_id, sku in busiest:
            served = httpx.get(f"{service.url}/v1/stock/{store_id}/{sku}", headers=OPS).json()
            assert served["on_hand"] == expected[(store_id, sku)], (store_id, sku)
        # Sell-through, every store × SKU: units sold less units returned, once each (the kill came mid-stream).
        assert asyncio.run(net_sold(crm_stack.database_url, schema)) == {k: -v for k, v in expected.items() if v}
        listed = httpx.get(f"{service.url}/v1/orders", params={"limit": 1000}, headers=OPS).json()["orders"]
        orders: dict[str, Any] = {}
        # Waits for as many records as orders listed: the outbox relay publishes after each commit.
        for record in asyncio.run(read_topic(bootstrap, SUPPLIER_REORDERS.qualified(prefix),
                                             expected=max(len(listed), 1), timeout=30, settle=2.0)):
            payload = orjson.loads(record.value)["payload"]
            first = orders.setdefault(payload["po_id"], payload)
            assert first == payload, f"{payload['po_id']} published twice with different payloads"
        # Every order raised is on the topic, and nothing else (the API lists at most 1,000, newest first).
        assert orders and asyncio.run(order_ids(crm_stack.database_url, schema)) == set(orders)
        assert {o["po_id"] for o in listed} <= set(orders) and len(listed) == min(len(orders), 1000)
        need_ids = [need for o in orders.values() for line in o["lines"] for need in [line["need_id"], *line["also_fills"]]]
        assert len(need_ids) == len(set(need_ids))
        keys = [(o["store_id"], o["supplier_id"], o["cycle"]) for o in orders.values()]
        assert len(keys) == len(set(keys)), "two orders for one supplier × store × cycle"
    finally:
        service.stop()


def offer(offer_id: str, sku: str, start_day: datetime, *, withheld: bool = False) -> Any:
    from crm_shared.marketing_events import OfferIssued, OfferReason, offer_event

    return offer_event(OfferIssued(
        offer_id=offer_id, member_id=f"m-{offer_id}", campaign_id="spring", channel="email", template="t",
        text="" if withheld else "10% off", products=[sku], discount_percent="10", store_id="s1",
        reason=OfferReason(trigger="cross_sell", detail="A -> B", source_event_id=uuid.uuid4()),
        valid_from=start_day, valid_to=start_day + timedelta(days=6), withheld=withheld))


def test_poison_records_go_to_the_dead_letter_topics_and_campaigns_raise_expected_demand(
        crm_stack: StackEndpoints, tmp_path: Path) -> None:
    from aiokafka import AIOKafkaProducer
    from crm_shared.serde import encode
    from crm_shared.supply_events import GoodsReceipt, goods_received
    from crm_shared.topics import MARKETING_OFFERS

    prefix, schema = f"rz{uuid.uuid4().hex[:6]}.", f"replenishment_{uuid.uuid4().hex[:8]}"
    bootstrap = crm_stack.kafka_bootstrap
    service = start(crm_stack, tmp_path, prefix, schema, REPLENISHMENT_UNITS_PER_OFFER="7")
    unknown_store = goods_received(GoodsReceipt(receipt_id="x1", store_id="nowhere", received_at=datetime.now(UTC),
                                                lines=[{"sku": "A", "quantity": 1}]), source="test")

    async def inject() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        await producer.send_and_wait(POS_SALES.qualified(prefix), b"\xff not json", key=b"s1")
        await producer.send_and_wait(INVENTORY_RECEIPTS.qualified(prefix), orjson.dumps({"payload": {}}), key=b"s1")
        await producer.send_and_wait(INVENTORY_RECEIPTS.qualified(prefix), encode(unknown_store), key=b"nowhere")
        await producer.stop()

    try:
        asyncio.run(inject())
        asyncio.run(replay_kafka(steady_sales(2), bootstrap=bootstrap, topic_prefix=prefix, progress=False))
        caught_up(bootstrap, prefix, "sales", POS_SALES.name)
        caught_up(bootstrap, prefix, "sell-through", POS_SALES.name)
        caught_up(bootstrap, prefix, "receipts", INVENTORY_RECEIPTS.name)
        dead_sales = asyncio.run(read_topic(bootstrap, POS_SALES.dlq(prefix), expected=2))
        dead_receipts = asyncio.run(read_topic(bootstrap, INVENTORY_RECEIPTS.dlq(prefix), expected=2))
        # once by each consumer group of the sales: stock and sell-through
        assert sorted((dict(r.headers)["dlq.consumer"].decode(), dict(r.headers)["dlq.reason"].decode()[:14])
                      for r in dead_sales) == [(f"{prefix}replenishment.sales", "not valid JSON"),
                                               (f"{prefix}replenishment.sell-through", "not valid JSON")]
        reasons = sorted(dict(r.headers)["dlq.reason"].decode() for r in dead_receipts)
        assert reasons[0].startswith("breaks the contract") and "unknown store" in reasons[1]
        before = httpx.get(f"{service.url}/v1/stock/s1/A", headers=OPS).json()
        assert before["on_hand"] == -20 and before["campaign_offers"] == 0

        # Ten offers of A at s1 for the coming week (7 units each expected: 10 a day), one withheld.
        day = steady_sales(2)[-1].occurred_at
        offers = [offer(f"o{i}", "A", day) for i in range(10)] + [offer("control", "A", day, withheld=True)]

        async def publish_offers() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
            await producer.start()
            for event in offers:
                await producer.send_and_wait(MARKETING_OFFERS.qualified(prefix), encode(event), key=event.key.encode())
            await producer.stop()

        asyncio.run(publish_offers())
        caught_up(bootstrap, prefix, "offers", MARKETING_OFFERS.name)
        during = httpx.get(f"{service.url}/v1/stock/s1/A", headers=OPS).json()
        assert during["campaign_offers"] == 10
        assert during["forecast_daily"] == pytest.approx(before["forecast_daily"] + 10, abs=0.01)
        assert during["reorder_point"] >= before["reorder_point"] + 19  # two days of lead time, 10 more a day
    finally:
        service.stop()


def test_two_replicas_share_the_work_and_raise_each_order_once(crm_stack: StackEndpoints, tmp_path: Path) -> None:
    """Two processes in one consumer group: a store's sales arrive on every partition (they are keyed
    by member), so both replicas update the same stock rows and close the same cycles."""
    sales = load_sales(SLICE)[0]
    prefix, schema = f"r2{uuid.uuid4().hex[:6]}.", f"replenishment_{uuid.uuid4().hex[:8]}"
    bootstrap = crm_stack.kafka_bootstrap
    first = start(crm_stack, tmp_path, prefix, schema, REPLENISHMENT_CONSUMER_BATCH="300")
    second = start(crm_stack, tmp_path, prefix, schema, REPLENISHMENT_CONSUMER_BATCH="300")
    try:
        asyncio.run(publish_catalog(products_from_sales(sales), bootstrap=bootstrap, topic_prefix=prefix,
                                    progress=False))
        caught_up(bootstrap, prefix, "catalog", CATALOG_PRODUCTS.name)
        asyncio.run(replay_kafka(sales, bootstrap=bootstrap, topic_prefix=prefix, progress=False))
        caught_up(bootstrap, prefix, "sales", POS_SALES.name, timeout=180)
        counters = [consumer_counters(replica.url).get(f"{prefix}replenishment.sales", {}) for replica in (first, second)]
        assert sum(c.get("dead_lettered", 0.0) for c in counters) == 0, "a sale was dead-lettered under contention"
        applied = [c.get("applied", 0.0) for c in counters]
        assert all(a > 0 for a in applied) and sum(applied) == len(sales)
        # Each replica's batches are in /metrics, none over REPLENISHMENT_CONSUMER_BATCH records.
        # (A batch holds at least one record; a rebalance may redeliver some as duplicates.)
        assert all(math.ceil(c["applied"] / 300) <= c["batches"] <= c["applied"] + c.get("duplicate", 0.0)
                   for c in counters)
        expected = batch_stock(sales)
        for (store_id, sku), on_hand in sorted(expected.items(), key=lambda item: item[1])[:40]:
            assert httpx.get(f"{first.url}/v1/stock/{store_id}/{sku}", headers=OPS).json()["on_hand"] == on_hand
        orders: dict[str, Any] = {}
        for record in asyncio.run(read_topic(bootstrap, SUPPLIER_REORDERS.qualified(prefix), expected=1,
                                             timeout=30, settle=2.0)):
            payload = orjson.loads(record.value)["payload"]
            assert orders.setdefault(payload["po_id"], payload) == payload
        need_ids = [need for o in orders.values() for line in o["lines"] for need in [line["need_id"], *line["also_fills"]]]
        assert orders and len(need_ids) == len(set(need_ids))
        keys = [(o["store_id"], o["supplier_id"], o["cycle"]) for o in orders.values()]
        assert len(keys) == len(set(keys))
    finally:
        first.stop()
        second.stop()


def test_a_huge_first_day_line_neither_breaks_the_order_contract_nor_stops_the_store(
        crm_stack: StackEndpoints, tmp_path: Path) -> None:
    """A SKU's first sale is 1,000,000 units (the Sale contract's maximum): its need used to be that
    lump × the lead time, over the order line's maximum, so building the order failed, the next sale
    was dead-lettered and the store's day never advanced again. Every later sale must be booked."""
    prefix, schema = f"rh{uuid.uuid4().hex[:6]}.", f"replenishment_{uuid.uuid4().hex[:8]}"
    bootstrap = crm_stack.kafka_bootstrap
    service = start(crm_stack, tmp_path, prefix, schema)
    try:
        asyncio.run(publish_catalog(CATALOG, bootstrap=bootstrap, topic_prefix=prefix, progress=False))
        caught_up(bootstrap, prefix, "catalog", CATALOG_PRODUCTS.name)
        first = datetime(2011, 1, 3, 10, 0, tzinfo=UTC)
        sales = [sale("huge", first, {"A": 1_000_000, "B": 4})]
        sales += [sale(f"later{d}", first + timedelta(days=d), {"A": 5, "B": 4}) for d in range(1, 5)]
        for one in sales:  # one batch per day: each later day closes the ordering cycle before it
            asyncio.run(replay_kafka([one], bootstrap=bootstrap, topic_prefix=prefix, progress=False))
            caught_up(bootstrap, prefix, "sales", POS_SALES.name)
        a = httpx.get(f"{service.url}/v1/stock/s1/A", headers=OPS).json()
        b = httpx.get(f"{service.url}/v1/stock/s1/B", headers=OPS).json()
        assert (a["sold"], a["on_hand"]) == (1_000_020, -1_000_020)  # no sale dead-lettered
        assert (b["sold"], b["on_hand"]) == (20, -20)
        orders = [orjson.loads(r.value)["payload"] for r in asyncio.run(read_topic(
            bootstrap, SUPPLIER_REORDERS.qualified(prefix), expected=4, timeout=30, settle=2.0))]
        a_lines = [line for o in orders for line in o["lines"] if line["sku"] == "A"]
        assert a_lines and all(0 < line["quantity"] <= 1_000_000 and line["quantity"] % 6 == 0 for line in a_lines)
        assert sum(line["quantity"] for line in a_lines) >= 1_000_000  # the missing stock is ordered, split
        listed = httpx.get(f"{service.url}/v1/orders", params={"limit": 100}, headers=OPS).json()["orders"]
        assert {o["po_id"] for o in listed} == {o["po_id"] for o in orders}
        # Two receipts of 2,000 × 1,000,000 units of A against an order that also has B: 4e9 received
        # on one line used to overflow int32 (a 500); the totals are 64-bit now.
        po = next(o for o in orders if {line["sku"] for line in o["lines"]} >= {"A", "B"})
        for n in range(2):
            answer = httpx.post(f"{service.url}/v1/receipts", headers=OPS, json={
                "receipt_id": f"big{n}", "store_id": "s1", "po_id": po["po_id"],
                "received_at": "2011-01-08T09:00:00+00:00", "lines": [{"sku": "A", "quantity": 1_000_000}] * 2000})
            assert answer.status_code == 201, answer.text
        assert answer.json()["received"]["A"] == 4_000_000_000 and answer.json()["over_delivered"] is True
        a = httpx.get(f"{service.url}/v1/stock/s1/A", headers=OPS).json()
        assert a["on_hand"] == 4_000_000_000 - 1_000_020
    finally:
        service.stop()
