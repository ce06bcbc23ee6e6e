"""One function per command, query or event: load, decide with the domain, save, emit, in one unit of work."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from crm_shared.events import Envelope, Product, Sale
from crm_shared.marketing_events import OfferIssued
from crm_shared.outbox import add_events
from crm_shared.supply_events import (
    GoodsReceipt,
    OrderLine,
    PurchaseOrder,
    SupplierAck,
    goods_received,
    purchase_order_raised,
    supplier_acknowledged,
)
from crm_shared.topics import INVENTORY_LOW_STOCK, INVENTORY_RECEIPTS, SUPPLIER_ACKS, SUPPLIER_REORDERS
from sqlalchemy import and_, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from replenishment import SERVICE_NAME, store
from replenishment.domain import (
    EXPECTS_NO_GOODS,
    Policy,
    Promotion,
    Refused,
    Terms,
    after,
    days_of_cover,
    is_low,
    overdue,
    po_id_for,
    receive,
    receive_late,
    reorder_levels,
)
from replenishment.ledger import UNASSIGNED, CycleClosed, StockKey, StockLedger, daily_sales, plan_orders

log = logging.getLogger(__name__)

@dataclass
class SalesOutcome:
    lines: int = 0
    needs: int = 0
    orders: list[str] = field(default_factory=list)
    low_stock: int = 0
    late_lines: int = 0


class SupplyHandlers:
    def __init__(self, engine: AsyncEngine, policy: Policy, *, topic_prefix: str, wake_relay: Any = None) -> None:
        self.engine = engine
        self.policy = policy
        self.reorders_topic = SUPPLIER_REORDERS.qualified(topic_prefix)
        self.low_stock_topic = INVENTORY_LOW_STOCK.qualified(topic_prefix)
        self.receipts_topic = INVENTORY_RECEIPTS.qualified(topic_prefix)
        self.acks_topic = SUPPLIER_ACKS.qualified(topic_prefix)
        self.wake_relay = wake_relay or (lambda: None)

    async def after_commit(self, _: Any) -> None:
        self.wake_relay()

    # --- the catalog --------------------------------------------------------------------------

    async def apply_catalog(self, conn: AsyncConnection, listed: list[Envelope[Product]]) -> None:
        latest = {event.payload.sku: event.payload for event in listed}
        rows = [{"sku": p.sku, "description": p.description, "supplier_id": p.supplier_id, "unit_cost": p.unit_cost,
                 "pack_size": p.pack_size, "min_order_quantity": p.min_order_quantity,
                 "lead_time_days": p.lead_time_days, "shelf_capacity": p.shelf_capacity} for p in latest.values()]
        statement = insert(store.products)
        await conn.execute(statement.on_conflict_do_update(
            index_elements=["sku"], set_={**{c: statement.excluded[c] for c in rows[0] if c != "sku"},
                                          "updated_at": func.now()}), rows)

    # --- planned campaigns ---------------------------------------------------------------------

    async def apply_offers(self, conn: AsyncConnection, events: list[Envelope[OfferIssued]]) -> None:
        """Issued offers for a store's products raise their expected demand while the offer runs; a
        withheld (control) offer is not demand, and an offer for no particular product or store is
        not tied to any stock."""
        rows = [{"offer_id": e.payload.offer_id, "sku": sku, "store_id": e.payload.store_id,
                 "first_day": e.payload.valid_from.date(), "last_day": e.payload.valid_to.date()}
                for e in events if not e.payload.withheld and e.payload.store_id is not None
                for sku in dict.fromkeys(e.payload.products)]
        await store.add_promotions(conn, rows)

    # --- the sales stream: the hot path ---------------------------------------------------------

    async def apply_sales(self, conn: AsyncConnection, events: list[Envelope[Sale]]) -> SalesOutcome:
        """Stock, forecasts, reorder points, low stock and needs, decided sale by sale in
        topic order (`StockLedger`), in the consumer's transaction; then purchase orders for each
        ordering cycle a sale closed, in the order they closed."""
        latest: dict[str, datetime] = {}
        earliest: dict[str, date] = {}
        keys: dict[StockKey, None] = {}
        for event in events:
            sale = event.payload
            if sale.store_id not in latest or sale.occurred_at > latest[sale.store_id]:
                latest[sale.store_id] = sale.occurred_at
            day = sale.occurred_at.date()
            if sale.store_id not in earliest or day < earliest[sale.store_id]:
                earliest[sale.store_id] = day
            keys.update(((sale.store_id, line.sku), None) for line in sale.lines)
        days = await store.advance_stores(conn, latest)
        rows = await store.lock_stock(conn, list(keys))
        # The first ordering cycle the walk can reach per store: its day before the batch (the walk's
        # day never goes back), or the earliest sale's day for a store seen for the first time.
        first_cycle = {s: before if before is not None else earliest[s] for s, (before, _) in days.items()}
        since = min(first_cycle.values())
        ledger = StockLedger(
            self.policy, rows, await store.terms_for(conn, {sku for _, sku in keys}),
            await store.promotions_for(conn, rows, since), await store.needs_raised(conn, list(keys), first_cycle),
            {store_id: before for store_id, (before, _) in days.items()},
            {key: store.model_of(row) for key, row in rows.items()})
        for event in events:
            ledger.apply(event.payload)
        outcome = SalesOutcome(lines=ledger.lines, late_lines=ledger.late_lines, low_stock=len(ledger.low_stock))
        created = await store.add_needs(conn, ledger.needs)
        for need in ledger.needs:
            if need["need_id"] in created:
                outcome.needs += 1
            else:  # raised meanwhile by another replica (the stock lock makes this unexpected): not ours to count
                rows[(need["store_id"], need["sku"])]["on_order"] -= need["quantity"]
        for key, model in ledger.models.items():
            rows[key].update(store.model_columns(model))
        await store.save_stock(conn, rows.values())
        rounds = ledger.rounds()
        if rounds:
            # In a savepoint: orders that cannot be built are logged and their needs stay parked for the
            # next close; that never fails the batch (whose sales the consumer would dead-letter).
            try:
                async with conn.begin_nested():
                    outcome.orders += await self.raise_orders(conn, rounds)
            except Exception:
                log.exception("purchase orders not raised; their needs wait for the next cycle",
                              extra={"stores": sorted({c.store_id for closes in rounds for c in closes})})
        await add_events(conn, store.outbox, self.low_stock_topic, ledger.low_stock)
        return outcome

    async def apply_sell_through(self, conn: AsyncConnection, events: list[Envelope[Sale]]) -> None:
        """Daily units sold and returned per store × SKU (`GET /v1/suppliers/me/sell-through`). A consumer
        group of its own: this upsert (a row per store × SKU × day, ~300,000 over the Online Retail
        year) ran inside the stock batches, the path every reorder decision waits on."""
        await store.add_daily_sales(conn, [{"store_id": s, "sku": k, "day": d, "sold": v[0], "returned": v[1]}
                                           for (s, k, d), v in daily_sales([e.payload for e in events]).items()])

    async def raise_orders(self, conn: AsyncConnection, rounds: list[list[CycleClosed]]) -> list[str]:
        """One purchase order per supplier × store for the needs of the cycles each close closed, raised at
        the time of the sale that closed them (`plan_orders`, round by round). A need is on one order line,
        ever: its `po_id` is set once, and the order's id is derived from supplier, store and cycle
        (unique), so a redelivery, a restart or a second replica raises nothing twice. The same few
        statements for all of a batch's closes, whatever their number (a statement set and a savepoint per
        close were 385 of them for ten 2,000-sale batches of a backlog)."""
        last_close = {c.store_id: c.day for closes in rounds for c in closes}  # a store's closes come in order
        pending = await store.needs_to_order(conn, last_close)
        # The id of any order the plan could raise is that of one of the needs' supplier, store and cycle.
        taken = await store.orders_among(conn, {po_id_for(n.supplier_id, n.store_id, n.cycle) for n in pending})
        orders: dict[str, tuple[dict[str, Any], tuple[Any, ...]]] = {
            plan.po_id: ({"po_id": plan.po_id, "supplier_id": plan.supplier_id, "store_id": plan.store_id,
                          "cycle": plan.cycle, "status": "raised", "raised_at": plan.raised_at,
                          "expected_by": plan.raised_at + timedelta(days=max(n.lead_time_days for n in plan.needs))},
                         plan.needs)
            for plan in plan_orders(rounds, pending, taken)}
        # An order that exists already (a second replica's, raised meanwhile) is not raised again, and its
        # needs wait for the next cycle.
        inserted = await store.add_orders(conn, [order for order, _ in orders.values()])
        raised = [po_id for po_id in orders if po_id in inserted]
        lines: list[dict[str, Any]] = []
        events: list[Envelope[Any]] = []
        filled: list[dict[str, Any]] = []
        for po_id in raised:
            order, group = orders[po_id]
            filled += [{"need_id": n.need_id, "po_id": po_id} for n in group]
            # One line per sku: a need of an earlier cycle that missed its order is folded into it.
            by_sku: dict[str, list[Any]] = defaultdict(list)
            for need in group:
                by_sku[need.sku].append(need)
            order_lines = [OrderLine(
                sku=sku, quantity=sum(n.quantity for n in same), pack_size=same[-1].pack_size,
                unit_cost=same[-1].unit_cost, need_id=same[0].need_id, also_fills=[n.need_id for n in same[1:]],
                reorder_point=same[-1].reorder_point, order_up_to=same[-1].order_up_to, on_hand=same[-1].on_hand,
                on_order=same[0].on_order, forecast_daily=round(same[-1].forecast_daily, 4))
                for sku, same in by_sku.items()]
            lines += [{"po_id": po_id, "sku": line.sku, "need_id": line.need_id, "quantity": line.quantity,
                       "unit_cost": line.unit_cost} for line in order_lines]
            events.append(purchase_order_raised(PurchaseOrder(
                po_id=po_id, supplier_id=order["supplier_id"], store_id=order["store_id"], cycle=order["cycle"],
                raised_at=order["raised_at"], expected_by=order["expected_by"], lines=order_lines),
                source=SERVICE_NAME))
        await store.fill_needs(conn, filled)
        await store.add_order_lines(conn, lines)
        await add_events(conn, store.outbox, self.reorders_topic, events)
        return raised

    # --- goods receipts -----------------------------------------------------------------------

    async def apply_receipts(self, conn: AsyncConnection, events: list[Envelope[GoodsReceipt]]) -> None:
        for event in events:
            await self._receive(conn, event.payload)

    async def receive_goods(self, receipt: GoodsReceipt) -> dict[str, Any]:
        """`POST /v1/receipts`: applied here, then announced on inventory.receipts.v1 (our own consumer
        finds its event id applied and skips it)."""
        event = goods_received(receipt, source=SERVICE_NAME)
        async with self.engine.begin() as conn:
            fresh = (await conn.execute(insert(store.applied_events).on_conflict_do_nothing().returning(
                store.applied_events.c.event_id), [{"event_id": event.event_id, "topic": self.receipts_topic}])).first()
            result = await self._receive(conn, receipt)
            if fresh is not None:
                await add_events(conn, store.outbox, self.receipts_topic, [event])
        self.wake_relay()
        return result

    async def _receive(self, conn: AsyncConnection, receipt: GoodsReceipt) -> dict[str, Any]:
        delivered: dict[str, int] = defaultdict(int)
        for line in receipt.lines:
            delivered[line.sku] += line.quantity
        existing = (await conn.execute(select(store.receipts).where(
            store.receipts.c.store_id == receipt.store_id, store.receipts.c.receipt_id == receipt.receipt_id))).first()
        if existing is not None:
            return {"receipt_id": receipt.receipt_id, "store_id": receipt.store_id, "po_id": existing.po_id,
                    "already_recorded": True, "over_delivered": existing.over_delivered}
        if not await store.known_store(conn, receipt.store_id):
            raise Refused(404, "not_found", "store_id", f"unknown store {receipt.store_id!r}")
        unknown = sorted(set(delivered) - await store.known_skus(conn, delivered))
        if unknown:
            raise Refused(422, "validation_failed", "lines.sku", f"unknown sku {unknown[0]!r}")
        release: dict[str, int] = {}
        result: dict[str, Any] = {"receipt_id": receipt.receipt_id, "store_id": receipt.store_id,
                                  "po_id": receipt.po_id, "already_recorded": False, "over_delivered": False}
        if receipt.po_id is not None:
            po = await self._order_for_update(conn, receipt.po_id)
            if po.store_id != receipt.store_id:
                raise Refused(422, "validation_failed", "po_id", f"order {po.po_id} is for store {po.store_id}")
            lines = await self._lines(conn, po.po_id)
            ordered = {sku: line.quantity for sku, line in lines.items()}
            received_before = {sku: line.received for sku, line in lines.items()}
            if po.status in EXPECTS_NO_GOODS:  # arrived after the order was done with: stock all the same
                outcome = receive_late(po.status, ordered, received_before, dict(delivered))
            else:
                after(po.status, "receive")
                outcome = receive(ordered, received_before, dict(delivered))
            await store.set_received(conn, po.po_id, {sku: total for sku, total in outcome.received.items() if sku in lines})
            over = bool(outcome.over_delivered or outcome.unordered)
            await conn.execute(update(store.purchase_orders).where(store.purchase_orders.c.po_id == po.po_id).values(
                status=outcome.status, received_at=receipt.received_at,
                over_delivered=store.purchase_orders.c.over_delivered | over))
            release = outcome.on_order_release
            result.update(status=outcome.status, over_delivered=over, over_delivered_units=outcome.over_delivered,
                          unordered_units=outcome.unordered, received=outcome.received)
        rows = await store.lock_stock(conn, [(receipt.store_id, sku) for sku in delivered])
        for (_, sku), row in rows.items():
            row["on_hand"] += delivered[sku]
            row["received"] += delivered[sku]
            row["on_order"] = max(0, row["on_order"] - release.get(sku, 0))
            row["negative_since"] = row["negative_since"] if row["on_hand"] < 0 else None
        await store.save_stock(conn, rows.values())
        await conn.execute(insert(store.receipts), [{
            "store_id": receipt.store_id, "receipt_id": receipt.receipt_id, "po_id": receipt.po_id,
            "received_at": receipt.received_at, "lines": [f"{sku}:{q}" for sku, q in delivered.items()],
            "over_delivered": result["over_delivered"]}])
        return result

    # --- stock counts ---------------------------------------------------------------------------

    async def count_stock(self, count_id: str, store_id: str, sku: str, counted: int, counted_at: datetime) -> dict[str, Any]:
        """Sets on hand to what was counted; the difference is recorded as shrinkage (positive = missing).
        A count id is the store's own: a repeat with the same body answers the record, a different body is 409."""
        async with self.engine.begin() as conn:
            existing = await self._count(conn, store_id, count_id)
            if existing is not None:
                return _repeated_count(existing, sku, counted, counted_at)
            if not await store.known_store(conn, store_id):
                raise Refused(404, "not_found", "store_id", f"unknown store {store_id!r}")
            if not await store.known_skus(conn, [sku]):
                raise Refused(422, "validation_failed", "sku", f"unknown sku {sku!r}")
            row = (await store.lock_stock(conn, [(store_id, sku)]))[(store_id, sku)]
            existing = await self._count(conn, store_id, count_id)  # recorded while we waited for the lock
            if existing is not None:
                return _repeated_count(existing, sku, counted, counted_at)
            shrinkage = row["on_hand"] - counted
            record = {"count_id": count_id, "store_id": store_id, "sku": sku, "expected": shrinkage + counted,
                      "counted": counted, "shrinkage": shrinkage, "counted_at": counted_at}
            inserted = (await conn.execute(insert(store.stock_counts).on_conflict_do_nothing().returning(
                store.stock_counts.c.count_id), [record])).first()
            if inserted is None:  # the same id, for another sku, committed concurrently: nothing of ours is kept
                raise Refused(409, "conflict", "count_id", f"count {count_id!r} was recorded for another count")
            row["on_hand"] = counted
            row["shrinkage"] += shrinkage
            row["negative_since"] = None
            await store.save_stock(conn, [row])
        return {**record, "already_recorded": False}

    async def _count(self, conn: AsyncConnection, store_id: str, count_id: str) -> Any:
        return (await conn.execute(select(store.stock_counts).where(
            store.stock_counts.c.store_id == store_id, store.stock_counts.c.count_id == count_id))).first()

    # --- the purchase-order lifecycle -----------------------------------------------------------

    async def _order_for_update(self, conn: AsyncConnection, po_id: str) -> Any:
        po = (await conn.execute(select(store.purchase_orders).where(store.purchase_orders.c.po_id == po_id)
                                 .with_for_update())).first()
        if po is None:
            raise Refused(404, "not_found", "po_id", f"no purchase order {po_id!r}")
        return po

    async def _lines(self, conn: AsyncConnection, po_id: str) -> dict[str, Any]:
        return {row.sku: row for row in await conn.execute(
            select(store.po_lines).where(store.po_lines.c.po_id == po_id).order_by(store.po_lines.c.sku))}

    async def _release_open_quantities(self, conn: AsyncConnection, po: Any) -> None:
        """An order that will not come (rejected, closed short): its outstanding units leave on-order."""
        lines = await self._lines(conn, po.po_id)
        rows = await store.lock_stock(conn, [(po.store_id, sku) for sku in lines])
        for (_, sku), row in rows.items():
            row["on_order"] = max(0, row["on_order"] - max(0, lines[sku].quantity - lines[sku].received))
        await store.save_stock(conn, rows.values())

    async def apply_acks(self, conn: AsyncConnection, events: list[Envelope[SupplierAck]]) -> None:
        for event in events:
            await self._acknowledge(conn, event.payload)

    async def acknowledge(self, ack: SupplierAck) -> dict[str, Any]:
        """`POST /v1/suppliers/orders/{po}/ack`; announced on supplier.acks.v1 like an EDI answer."""
        event = supplier_acknowledged(ack, source=SERVICE_NAME)
        async with self.engine.begin() as conn:
            fresh = (await conn.execute(insert(store.applied_events).on_conflict_do_nothing().returning(
                store.applied_events.c.event_id), [{"event_id": event.event_id, "topic": self.acks_topic}])).first()
            status = await self._acknowledge(conn, ack)
            if fresh is not None:
                await add_events(conn, store.outbox, self.acks_topic, [event])
        self.wake_relay()
        return {"po_id": ack.po_id, "status": status}

    async def _acknowledge(self, conn: AsyncConnection, ack: SupplierAck) -> str:
        po = await self._order_for_update(conn, ack.po_id)
        if po.supplier_id != ack.supplier_id:
            raise Refused(403, "forbidden", "po_id", f"order {ack.po_id} is not for supplier {ack.supplier_id}")
        status = after(po.status, ack.decision)
        if status != po.status:
            await conn.execute(update(store.purchase_orders).where(store.purchase_orders.c.po_id == po.po_id)
                               .values(status=status, acked_at=ack.acked_at, reason=ack.reason))
            if status == "rejected":
                await self._release_open_quantities(conn, po)
        return status

    async def ship(self, po_id: str, supplier_id: str | None, at: datetime | None) -> dict[str, Any]:
        async with self.engine.begin() as conn:
            po = await self._order_for_update(conn, po_id)
            if supplier_id is not None and po.supplier_id != supplier_id:
                raise Refused(403, "forbidden", "po_id", f"order {po_id} is not for supplier {supplier_id}")
            status = after(po.status, "ship")
            if status != po.status:
                await conn.execute(update(store.purchase_orders).where(store.purchase_orders.c.po_id == po_id)
                                   .values(status=status, shipped_at=at or await self._now(conn)))
        return {"po_id": po_id, "status": status}

    async def close(self, po_id: str, at: datetime | None) -> dict[str, Any]:
        async with self.engine.begin() as conn:
            po = await self._order_for_update(conn, po_id)
            status = after(po.status, "close")
            if status != po.status:
                if po.status != "rejected":
                    await self._release_open_quantities(conn, po)
                await conn.execute(update(store.purchase_orders).where(store.purchase_orders.c.po_id == po_id)
                                   .values(status=status, closed_at=at or await self._now(conn)))
        return {"po_id": po_id, "status": status}

    async def _now(self, conn: AsyncConnection) -> datetime:
        """Event time the service has reached (the latest sale seen), else the wall clock."""
        return await store.event_time(conn) or datetime.now(UTC)

    async def event_time(self) -> datetime:
        async with self.engine.connect() as conn:
            return await self._now(conn)

    # --- reads --------------------------------------------------------------------------------

    async def order(self, po_id: str, supplier_id: str | None = None) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            po = (await conn.execute(select(store.purchase_orders).where(
                store.purchase_orders.c.po_id == po_id))).first()
            if po is None:
                raise Refused(404, "not_found", "po_id", f"no purchase order {po_id!r}")
            if supplier_id is not None and po.supplier_id != supplier_id:
                raise Refused(403, "forbidden", "po_id", f"order {po_id} is not for supplier {supplier_id}")
            lines = await self._lines(conn, po_id)
            now = await self._now(conn)
        return order_view(po, lines.values(), now)

    async def orders(self, *, supplier_id: str | None = None, store_id: str | None = None, open_only: bool = False,
                     overdue_only: bool = False, limit: int = 100) -> dict[str, Any]:
        po = store.purchase_orders
        query = select(po).order_by(po.c.raised_at.desc(), po.c.po_id).limit(limit)
        if supplier_id is not None:
            query = query.where(po.c.supplier_id == supplier_id)
        if store_id is not None:
            query = query.where(po.c.store_id == store_id)
        async with self.engine.connect() as conn:
            now = await self._now(conn)
            if open_only or overdue_only:
                query = query.where(po.c.status.in_(("raised", "acknowledged", "shipped", "partially_received")))
            if overdue_only:
                query = query.where(po.c.expected_by < now)
            orders = (await conn.execute(query)).all()
            lines: dict[str, list[Any]] = defaultdict(list)
            if orders:
                for row in await conn.execute(select(store.po_lines).where(
                        store.any_of(store.po_lines.c.po_id, [o.po_id for o in orders])).order_by(store.po_lines.c.sku)):
                    lines[row.po_id].append(row)
        return {"as_of": now, "orders": [order_view(o, lines[o.po_id], now) for o in orders]}

    async def stock_view(self, store_id: str, sku: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(store.stock).where(store.stock.c.store_id == store_id,
                                                                store.stock.c.sku == sku))).first()
            if row is None:
                if not await store.known_store(conn, store_id):
                    raise Refused(404, "not_found", "store_id", f"unknown store {store_id!r}")
                raise Refused(404, "not_found", "sku", f"no stock of {sku!r} at {store_id!r}")
            day = (await conn.execute(select(store.stores.c.current_day).where(
                store.stores.c.store_id == store_id))).scalar()
            terms = await store.terms_for(conn, [sku])
            promotions = await store.promotions_for(conn, [(store_id, sku)], day) if day else {}
        sku_terms, unit_cost = terms.get(sku, (UNASSIGNED, None))
        return stock_document(dict(row._mapping), day, sku_terms, unit_cost, self.policy,
                              promotions.get((store_id, sku), ()))

    async def below_reorder_point(self, store_id: str, limit: int) -> dict[str, Any]:
        s = store.stock
        async with self.engine.connect() as conn:
            if not await store.known_store(conn, store_id):
                raise Refused(404, "not_found", "store_id", f"unknown store {store_id!r}")
            rows = (await conn.execute(select(s).where(s.c.store_id == store_id,
                                                       s.c.on_hand + s.c.on_order <= s.c.reorder_point,
                                                       s.c.forecast_daily > 0)
                                       .order_by(s.c.sku).limit(limit))).all()
            day = (await conn.execute(select(store.stores.c.current_day).where(
                store.stores.c.store_id == store_id))).scalar()
            terms = await store.terms_for(conn, [r.sku for r in rows])
            promotions = await store.promotions_for(conn, [(store_id, r.sku) for r in rows], day) if day else {}
        items = []
        for row in rows:
            sku_terms, unit_cost = terms.get(row.sku, (UNASSIGNED, None))
            items.append(stock_document(dict(row._mapping), day, sku_terms, unit_cost, self.policy,
                                        promotions.get((store_id, row.sku), ())))
        return {"store_id": store_id, "as_of_day": day, "below": "reorder_point", "items": items}

    async def stores_below_reorder_point(self) -> dict[str, Any]:
        """How many SKUs of each store are at or below their reorder point: the chain at a glance."""
        s = store.stock
        skus_below = func.count().label("skus")
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(s.c.store_id, skus_below)
                                       .where(s.c.on_hand + s.c.on_order <= s.c.reorder_point, s.c.forecast_daily > 0)
                                       .group_by(s.c.store_id).order_by(skus_below.desc(), s.c.store_id))).all()
            days = {r.store_id: r.current_day for r in await conn.execute(select(store.stores))}
        return {"below": "reorder_point", "stores": [{"store_id": r.store_id, "skus": int(r.skus),
                                                      "as_of_day": days.get(r.store_id)} for r in rows]}

    async def supplier_products(self, supplier_id: str, limit: int) -> dict[str, Any]:
        """A supplier's own products at every store: stock, days of cover, the forecast to plan for."""
        s, p, st = store.stock, store.products, store.stores
        async with self.engine.connect() as conn:
            rows = (await conn.execute(
                select(s, st.c.current_day).join(p, p.c.sku == s.c.sku).join(st, st.c.store_id == s.c.store_id)
                .where(p.c.supplier_id == supplier_id).order_by(s.c.sku, s.c.store_id).limit(limit))).all()
            terms = await store.terms_for(conn, {r.sku for r in rows})
            since = min((r.current_day for r in rows), default=None)
            promotions = await store.promotions_for(conn, [(r.store_id, r.sku) for r in rows], since) if since else {}
        items = []
        for row in rows:
            sku_terms, unit_cost = terms[row.sku]
            doc = stock_document(dict(row._mapping), row.current_day, sku_terms, unit_cost, self.policy,
                                 promotions.get((row.store_id, row.sku), ()))
            items.append(doc)
        return {"supplier_id": supplier_id, "items": items}

    async def sell_through(self, supplier_id: str, *, since: date | None, sku: str | None, store_id: str | None,
                           limit: int) -> dict[str, Any]:
        d, p = store.daily_sales, store.products
        query = (select(d).join(p, p.c.sku == d.c.sku).where(p.c.supplier_id == supplier_id)
                 .order_by(d.c.day.desc(), d.c.sku, d.c.store_id).limit(limit))
        if since is not None:
            query = query.where(d.c.day >= since)
        if sku is not None:
            query = query.where(d.c.sku == sku)
        if store_id is not None:
            query = query.where(d.c.store_id == store_id)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {"supplier_id": supplier_id, "days": [
            {"sku": r.sku, "store_id": r.store_id, "day": r.day, "sold": r.sold, "returned": r.returned} for r in rows]}

    async def supplier_of(self, sku: str) -> str | None:
        async with self.engine.connect() as conn:
            return (await conn.execute(select(store.products.c.supplier_id).where(
                and_(store.products.c.sku == sku)))).scalar()


def _repeated_count(existing: Any, sku: str, counted: int, counted_at: datetime) -> dict[str, Any]:
    if (existing.sku, existing.counted, existing.counted_at) != (sku, counted, counted_at):
        raise Refused(409, "conflict", "count_id",
                      f"count {existing.count_id!r} of store {existing.store_id!r} was recorded with another body")
    return {**dict(existing._mapping), "already_recorded": True}


def stock_document(row: dict[str, Any], day: date | None, terms: Terms, unit_cost: Any, policy: Policy,
                   promotions: tuple[Promotion, ...] = ()) -> dict[str, Any]:
    """The stock of one store × sku with its forecast and levels rolled to the store's current day."""
    model = store.model_of(row)
    if day is not None:
        levels = reorder_levels(model, day, terms, policy, promotions)
        forecast, sigma, reorder_point, order_up_to = (levels.forecast_daily, levels.sigma_daily,
                                                       levels.reorder_point, levels.order_up_to)
    else:
        forecast, sigma, reorder_point, order_up_to = (row["forecast_daily"], row["sigma_daily"],
                                                       row["reorder_point"], row["order_up_to"])
    cover = days_of_cover(row["on_hand"], forecast)
    return {
        "store_id": row["store_id"], "sku": row["sku"], "on_hand": row["on_hand"], "on_order": row["on_order"],
        "negative": row["on_hand"] < 0, "negative_since": row["negative_since"],
        "sold": row["sold"], "returned": row["returned"], "received": row["received"],
        "shrinkage": row["shrinkage"], "as_of_day": day, "last_event_at": row["last_event_at"],
        "forecast_daily": round(forecast, 4), "forecast_sigma_daily": round(sigma, 4),
        "forecast_days_learned": model.days_learned,
        "forecast_wape": None if model.wape is None else round(model.wape, 4),
        "reorder_point": reorder_point, "order_up_to": order_up_to,
        "below_reorder_point": row["on_hand"] + row["on_order"] <= reorder_point and forecast > 0,
        "days_of_cover": None if cover is None else round(cover, 2),
        "low_stock": is_low(row["on_hand"], forecast, policy),
        "supplier_id": None if terms is UNASSIGNED else terms.supplier_id,
        "terms": None if terms is UNASSIGNED else {
            "pack_size": terms.pack_size, "min_order_quantity": terms.min_order_quantity,
            "lead_time_days": terms.lead_time_days, "shelf_capacity": terms.shelf_capacity,
            "unit_cost": None if unit_cost is None else str(unit_cost)},
        "late_lines": row["late_lines"],
        "campaign_offers": sum(p.offers for p in promotions if day is None or p.last_day >= day),
    }


def order_view(po: Any, lines: Any, now: datetime) -> dict[str, Any]:
    return {
        "po_id": po.po_id, "supplier_id": po.supplier_id, "store_id": po.store_id, "cycle": po.cycle,
        "status": po.status, "raised_at": po.raised_at, "expected_by": po.expected_by, "acked_at": po.acked_at,
        "shipped_at": po.shipped_at, "received_at": po.received_at, "closed_at": po.closed_at,
        "reason": po.reason, "over_delivered": po.over_delivered,
        "overdue": overdue(po.status, po.expected_by, now),
        "lines": [{"sku": line.sku, "quantity": line.quantity, "received": line.received,
                   "unit_cost": None if line.unit_cost is None else str(line.unit_cost),
                   "need_id": str(line.need_id)} for line in lines],
    }
