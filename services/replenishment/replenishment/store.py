"""replenishment's tables and the unit-of-work queries its handlers use."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date
from typing import Any

from crm_shared.consumer import applied_events_table
from crm_shared.db import any_of, column_types, insert_from_recordset, recordset, recordset_rows
from crm_shared.outbox import outbox_table
from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    any_,
    bindparam,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import UUID, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from replenishment.domain import DemandModel, Promotion, Terms

metadata = MetaData()
applied_events = applied_events_table(metadata)
# The sell-through consumer (its own group on pos.sales.v1, `stream.consumers`) records what it applied here.
applied_sell_through = applied_events_table(metadata, "applied_sell_through")
outbox = outbox_table(metadata)

products = Table(
    "products", metadata,
    Column("sku", String(64), primary_key=True),
    Column("description", Text, nullable=False, server_default=""),
    Column("supplier_id", String(64)),
    Column("unit_cost", Numeric),
    Column("pack_size", Integer),
    Column("min_order_quantity", Integer),
    Column("lead_time_days", Integer),
    Column("shelf_capacity", Integer),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_products_supplier", "supplier_id"),
)

# The event time each store has reached, and its day at the till (the ordering cycle).
stores = Table(
    "stores", metadata,
    Column("store_id", String(64), primary_key=True),
    Column("as_of", DateTime(timezone=True), nullable=False),
    Column("current_day", Date, nullable=False),
)

stock = Table(
    "stock", metadata,
    Column("store_id", String(64), primary_key=True),
    Column("sku", String(64), primary_key=True),
    Column("on_hand", BigInteger, nullable=False),
    Column("on_order", BigInteger, nullable=False),
    Column("sold", BigInteger, nullable=False),
    Column("returned", BigInteger, nullable=False),
    Column("received", BigInteger, nullable=False),
    Column("shrinkage", BigInteger, nullable=False),
    Column("negative_since", DateTime(timezone=True)),
    Column("low_since", Date),
    Column("last_event_at", DateTime(timezone=True)),
    Column("late_lines", BigInteger, nullable=False),
    # The demand model (domain.DemandModel) and the levels last computed from it.
    Column("level", Float, nullable=False),
    Column("season", ARRAY(Float), nullable=False),
    Column("days_learned", Integer, nullable=False),
    Column("error_square", Float, nullable=False),
    Column("error_abs", Float, nullable=False),
    Column("actual_abs", Float, nullable=False),
    Column("open_day", Date),
    Column("open_quantity", Float, nullable=False),
    Column("forecast_daily", Float, nullable=False),
    Column("sigma_daily", Float, nullable=False),
    Column("reorder_point", BigInteger, nullable=False),
    Column("order_up_to", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

daily_sales = Table(
    "daily_sales", metadata,
    Column("store_id", String(64), primary_key=True),
    Column("sku", String(64), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("sold", BigInteger, nullable=False),
    Column("returned", BigInteger, nullable=False),
)

# One need per store × sku × ordering cycle, ever: the primary key is derived from exactly that.
needs = Table(
    "needs", metadata,
    Column("need_id", UUID(as_uuid=True), primary_key=True),
    Column("store_id", String(64), nullable=False),
    Column("sku", String(64), nullable=False),
    Column("cycle", Date, nullable=False),
    Column("supplier_id", String(64), nullable=False),
    Column("quantity", BigInteger, nullable=False),
    Column("pack_size", Integer, nullable=False),
    Column("unit_cost", Numeric),
    Column("lead_time_days", Integer, nullable=False),
    Column("reorder_point", BigInteger, nullable=False),
    Column("order_up_to", BigInteger, nullable=False),
    Column("on_hand", BigInteger, nullable=False),
    Column("on_order", BigInteger, nullable=False),
    Column("forecast_daily", Float, nullable=False),
    Column("detected_at", DateTime(timezone=True), nullable=False),
    Column("po_id", String(64)),
    UniqueConstraint("store_id", "sku", "cycle", name="ux_needs_store_sku_cycle"),
    Index("ix_needs_unordered", "store_id", postgresql_where=text("po_id IS NULL")),
)

purchase_orders = Table(
    "purchase_orders", metadata,
    Column("po_id", String(64), primary_key=True),
    Column("supplier_id", String(64), nullable=False),
    Column("store_id", String(64), nullable=False),
    Column("cycle", Date, nullable=False),
    Column("status", String(24), nullable=False),
    Column("raised_at", DateTime(timezone=True), nullable=False),
    Column("expected_by", DateTime(timezone=True), nullable=False),
    Column("acked_at", DateTime(timezone=True)),
    Column("shipped_at", DateTime(timezone=True)),
    Column("received_at", DateTime(timezone=True)),
    Column("closed_at", DateTime(timezone=True)),
    Column("reason", Text, nullable=False, server_default=""),
    Column("over_delivered", Boolean, nullable=False, server_default=text("false")),
    UniqueConstraint("supplier_id", "store_id", "cycle", name="ux_po_supplier_store_cycle"),
    Index("ix_po_supplier_status", "supplier_id", "status"),
)

po_lines = Table(
    "po_lines", metadata,
    Column("po_id", String(64), ForeignKey("purchase_orders.po_id"), primary_key=True),
    Column("sku", String(64), primary_key=True),
    Column("need_id", UUID(as_uuid=True), nullable=False, unique=True),
    Column("quantity", BigInteger, nullable=False),
    Column("received", BigInteger, nullable=False, server_default="0"),
    Column("unit_cost", Numeric),
)

stock_counts = Table(
    "stock_counts", metadata,
    Column("store_id", String(64), primary_key=True),
    Column("count_id", String(64), primary_key=True),  # a count id is the store's own (migration 0005)
    Column("sku", String(64), nullable=False),
    Column("expected", BigInteger, nullable=False),
    Column("counted", BigInteger, nullable=False),
    Column("shrinkage", BigInteger, nullable=False),
    Column("counted_at", DateTime(timezone=True), nullable=False),
)

receipts = Table(
    "receipts", metadata,
    Column("store_id", String(64), primary_key=True),
    Column("receipt_id", String(64), primary_key=True),
    Column("po_id", String(64)),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("lines", ARRAY(Text), nullable=False),
    Column("over_delivered", Boolean, nullable=False),
)

def any_of_uuid(column: Any, values: Iterable[Any]) -> Any:
    return column == any_(bindparam(None, list(values), type_=ARRAY(UUID(as_uuid=True))))


# Planned campaigns: one row per issued offer × sku at a store (withheld control offers are not demand).
promotions = Table(
    "promotions", metadata,
    Column("offer_id", String(64), primary_key=True),
    Column("sku", String(64), primary_key=True),
    Column("store_id", String(64), nullable=False),
    Column("first_day", Date, nullable=False),
    Column("last_day", Date, nullable=False),
    Index("ix_promotions_store_sku", "store_id", "sku", "last_day"),
    Index("ix_promotions_last_day", "last_day"),
)


async def promotions_for(conn: AsyncConnection, keys: Iterable[tuple[str, str]],
                         since: date) -> dict[tuple[str, str], tuple[Promotion, ...]]:
    """Campaigns still running on or after `since` for the store × sku pairs, as offers per window."""
    keys = list(keys)
    if not keys:
        return {}
    running = select(promotions.c.offer_id).where(promotions.c.last_day >= since).limit(1)
    if (await conn.execute(running)).first() is None:  # the usual case: one cheap look, not a join of every key
        return {}
    result = await conn.execute(text(
        "SELECT p.store_id, p.sku, p.first_day, p.last_day, count(*) AS offers FROM promotions p "
        "JOIN unnest(CAST(:stores AS text[]), CAST(:skus AS text[])) AS k(store_id, sku) "
        "ON p.store_id = k.store_id AND p.sku = k.sku WHERE p.last_day >= :since "
        "GROUP BY p.store_id, p.sku, p.first_day, p.last_day"),
        {"stores": [s for s, _ in keys], "skus": [k for _, k in keys], "since": since})
    found: dict[tuple[str, str], list[Promotion]] = {}
    for row in result:
        found.setdefault((row.store_id, row.sku), []).append(Promotion(row.first_day, row.last_day, row.offers))
    return {key: tuple(value) for key, value in found.items()}


MODEL_COLUMNS = ("level", "season", "days_learned", "error_square", "error_abs", "actual_abs", "open_day",
                 "open_quantity")


def model_of(row: Any) -> DemandModel:
    m = row if isinstance(row, dict) else row._mapping
    return DemandModel(level=m["level"], season=tuple(m["season"]), days_learned=m["days_learned"],
                       error_square=m["error_square"], error_abs=m["error_abs"], actual_abs=m["actual_abs"],
                       open_day=m["open_day"], open_quantity=m["open_quantity"])


def model_columns(model: DemandModel) -> dict[str, Any]:
    return {"level": model.level, "season": list(model.season), "days_learned": model.days_learned,
            "error_square": model.error_square, "error_abs": model.error_abs, "actual_abs": model.actual_abs,
            "open_day": model.open_day, "open_quantity": model.open_quantity}


def new_stock_row(store_id: str, sku: str) -> dict[str, Any]:
    return {"store_id": store_id, "sku": sku, "on_hand": 0, "on_order": 0, "sold": 0, "returned": 0, "received": 0,
            "shrinkage": 0, "negative_since": None, "low_since": None, "last_event_at": None, "late_lines": 0,
            **model_columns(DemandModel()), "forecast_daily": 0.0, "sigma_daily": 0.0, "reorder_point": 0,
            "order_up_to": 0}


STOCK_COLUMNS = [c.name for c in stock.columns if c.name != "updated_at"]
_STOCK_KEY = ("store_id", "sku")
_STOCK_TYPES = column_types(stock, STOCK_COLUMNS)
# A new row is the keys and one shared set of starting values (`new_stock_row`'s): the keys travel as two
# arrays and the starting values as one row, not a full row per key (most keys of a batch exist already,
# and the full rows were a fifth of PostgreSQL's time on replenishment's sales in bench/replenishment_throughput.py).
_STOCK_STARTING = [c for c in STOCK_COLUMNS if c not in _STOCK_KEY]
_STOCK_STARTING_ROW = recordset_rows([new_stock_row("", "")], _STOCK_STARTING)
_NEW_STOCK_SQL = (
    f"INSERT INTO stock ({', '.join(STOCK_COLUMNS)}) "
    f"SELECT k.store_id, k.sku, {', '.join(f'starting.{c}' for c in _STOCK_STARTING)} "
    "FROM unnest(CAST(:stores AS text[]), CAST(:skus AS text[])) AS k(store_id, sku) "
    f"CROSS JOIN {recordset('starting', column_types(stock, _STOCK_STARTING))} "
    "ORDER BY k.store_id, k.sku ON CONFLICT DO NOTHING")
_SAVE_STOCK_SQL = (
    "UPDATE stock SET " + ", ".join(f"{c} = rows.{c}" for c in STOCK_COLUMNS if c not in _STOCK_KEY)
    + f", updated_at = now() FROM {recordset('rows', _STOCK_TYPES)} "
    "WHERE stock.store_id = rows.store_id AND stock.sku = rows.sku")


async def lock_stock(conn: AsyncConnection, keys: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The stock rows of `keys` (missing ones created), locked for this transaction in key order, so
    two replicas touching the same store × sku take turns instead of overwriting each other."""
    keys = sorted(set(keys))
    if not keys:
        return {}
    stores, skus = [s for s, _ in keys], [k for _, k in keys]
    await conn.execute(text(_NEW_STOCK_SQL), {"stores": stores, "skus": skus, "starting": _STOCK_STARTING_ROW})
    result = await conn.execute(text(
        "SELECT s.* FROM stock s JOIN unnest(CAST(:stores AS text[]), CAST(:skus AS text[])) AS k(store_id, sku) "
        "ON s.store_id = k.store_id AND s.sku = k.sku ORDER BY s.store_id, s.sku FOR UPDATE OF s"),
        {"stores": stores, "skus": skus})
    return {(row.store_id, row.sku): dict(row._mapping) for row in result}


async def save_stock(conn: AsyncConnection, rows: Iterable[dict[str, Any]]) -> None:
    """Write back rows `lock_stock` returned (so they exist and are locked): one statement."""
    rows = list(rows)
    if rows:
        await conn.execute(text(_SAVE_STOCK_SQL), {"rows": recordset_rows(rows, STOCK_COLUMNS)})


_DAILY_TYPES = column_types(daily_sales, ("store_id", "sku", "day", "sold", "returned"))
_ADD_DAILY_SQL = (
    "INSERT INTO daily_sales (store_id, sku, day, sold, returned) "
    f"SELECT rows.store_id, rows.sku, rows.day, rows.sold, rows.returned FROM {recordset('rows', _DAILY_TYPES)} "
    "ORDER BY rows.store_id, rows.sku, rows.day ON CONFLICT (store_id, sku, day) DO UPDATE SET "
    "sold = daily_sales.sold + excluded.sold, returned = daily_sales.returned + excluded.returned")


async def add_daily_sales(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(text(_ADD_DAILY_SQL), {"rows": recordset_rows(rows, _DAILY_TYPES)})


NEED_COLUMNS = ("need_id", "store_id", "sku", "cycle", "supplier_id", "quantity", "pack_size", "unit_cost",
                "lead_time_days", "reorder_point", "order_up_to", "on_hand", "on_order", "forecast_daily", "detected_at")
_ADD_NEEDS_SQL = insert_from_recordset(needs, NEED_COLUMNS, tail="ON CONFLICT DO NOTHING RETURNING need_id")


async def add_needs(conn: AsyncConnection, rows: list[dict[str, Any]]) -> set[Any]:
    """Insert needs; the ids that were new (a need already raised for its store, sku and cycle is not).
    One statement whatever the number of rows (`insert_from_recordset` says why that matters)."""
    if not rows:
        return set()
    result = await conn.execute(text(_ADD_NEEDS_SQL), {"rows": recordset_rows(rows, NEED_COLUMNS)})
    return {row.need_id for row in result}


async def needs_raised(conn: AsyncConnection, keys: list[tuple[str, str]],
                       since: dict[str, date]) -> set[tuple[str, str, date]]:
    """(store, sku, cycle) of the needs raised for `keys` in cycles from their store's `since` on (one
    day per store: with the oldest day of a batch's stores for all of them, a batch that held one
    store quiet for months read back every need of the busy stores' skus since then)."""
    if not keys:
        return set()
    result = await conn.execute(text(
        "SELECT n.store_id, n.sku, n.cycle FROM needs n "
        "JOIN unnest(CAST(:stores AS text[]), CAST(:skus AS text[]), CAST(:since AS date[])) AS k(store_id, sku, since) "
        "ON n.store_id = k.store_id AND n.sku = k.sku AND n.cycle >= k.since"),
        {"stores": [s for s, _ in keys], "skus": [k for _, k in keys], "since": [since[s] for s, _ in keys]})
    return {(row.store_id, row.sku, row.cycle) for row in result}


async def needs_to_order(conn: AsyncConnection, closed: dict[str, date]) -> list[Any]:
    """The needs not on an order yet of the cycles before each store's (last) closing day, locked (a
    second replica skips them), by store, supplier, sku and cycle. Only those cycles: the needs of the
    day a batch leaves open are written already, and wait for its close."""
    if not closed:
        return []
    stores = sorted(closed)
    result = await conn.execute(text(
        "SELECT n.* FROM needs n JOIN unnest(CAST(:stores AS text[]), CAST(:days AS date[])) AS k(store_id, day) "
        "ON n.store_id = k.store_id AND n.cycle < k.day WHERE n.po_id IS NULL "
        "ORDER BY n.store_id, n.supplier_id, n.sku, n.cycle FOR UPDATE OF n SKIP LOCKED"),
        {"stores": stores, "days": [closed[s] for s in stores]})
    return list(result.all())


ORDER_COLUMNS = ("po_id", "supplier_id", "store_id", "cycle", "status", "raised_at", "expected_by")
_ADD_ORDERS_SQL = insert_from_recordset(purchase_orders, ORDER_COLUMNS, tail="ON CONFLICT DO NOTHING RETURNING po_id")
LINE_COLUMNS = ("po_id", "sku", "need_id", "quantity", "unit_cost")
_ADD_LINES_SQL = insert_from_recordset(po_lines, LINE_COLUMNS, tail="")
_FILL_NEEDS_SQL = (f"UPDATE needs SET po_id = rows.po_id FROM "
                   f"{recordset('rows', column_types(needs, ('need_id', 'po_id')))} WHERE needs.need_id = rows.need_id")


async def add_orders(conn: AsyncConnection, rows: list[dict[str, Any]]) -> set[str]:
    """Insert purchase orders; the ids that were new (an order of its supplier, store and cycle is not)."""
    if not rows:
        return set()
    result = await conn.execute(text(_ADD_ORDERS_SQL), {"rows": recordset_rows(rows, ORDER_COLUMNS)})
    return {row.po_id for row in result}


async def orders_among(conn: AsyncConnection, po_ids: Iterable[str]) -> set[str]:
    """Which of these purchase order ids exist."""
    ids = sorted(po_ids)
    if not ids:
        return set()
    return {row.po_id for row in await conn.execute(
        select(purchase_orders.c.po_id).where(any_of(purchase_orders.c.po_id, ids)))}


async def add_order_lines(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(text(_ADD_LINES_SQL), {"rows": recordset_rows(rows, LINE_COLUMNS)})


async def fill_needs(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Set each need's `po_id` (`rows`: need_id, po_id)."""
    if rows:
        await conn.execute(text(_FILL_NEEDS_SQL), {"rows": recordset_rows(rows, ("need_id", "po_id"))})


async def terms_for(conn: AsyncConnection, skus: Iterable[str]) -> dict[str, tuple[Terms, Any]]:
    """Supplier terms (and unit cost) of the skus the catalog has them for."""
    rows = await conn.execute(select(products).where(any_of(products.c.sku, list(skus)),
                                                     products.c.supplier_id.is_not(None)))
    return {row.sku: (Terms(row.supplier_id, row.pack_size or 1, row.min_order_quantity or 1,
                            row.lead_time_days if row.lead_time_days is not None else 2, row.shelf_capacity),
                      row.unit_cost) for row in rows}


async def advance_stores(conn: AsyncConnection, latest: dict[str, Any]) -> dict[str, tuple[date | None, date]]:
    """Move each store's event time forward; returns (day before, day after) per store."""
    if not latest:
        return {}
    # Rows are locked in key order everywhere (stores, then stock; sell-through's own group upserts its
    # rows in key order), so two replicas working on the same store wait for each other instead of deadlocking.
    before = {row.store_id: row.current_day for row in await conn.execute(
        select(stores.c.store_id, stores.c.current_day).where(any_of(stores.c.store_id, list(latest)))
        .order_by(stores.c.store_id).with_for_update())}
    statement = insert(stores)
    await conn.execute(statement.on_conflict_do_update(
        index_elements=["store_id"],
        set_={"as_of": func.greatest(stores.c.as_of, statement.excluded.as_of),
              "current_day": func.greatest(stores.c.current_day, statement.excluded.current_day)}),
        [{"store_id": s, "as_of": at, "current_day": at.date()} for s, at in sorted(latest.items())])
    return {s: (before.get(s), max(before.get(s) or at.date(), at.date())) for s, at in latest.items()}


PROMOTION_COLUMNS = ("offer_id", "sku", "store_id", "first_day", "last_day")
_ADD_PROMOTIONS_SQL = insert_from_recordset(promotions, PROMOTION_COLUMNS)


async def add_promotions(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Offers' products by store and days, in one statement (an offer seen again adds nothing)."""
    if rows:
        await conn.execute(text(_ADD_PROMOTIONS_SQL), {"rows": recordset_rows(rows, PROMOTION_COLUMNS)})


_SET_RECEIVED_SQL = (
    "UPDATE po_lines SET received = r.received FROM unnest(CAST(:skus AS text[]), CAST(:received AS bigint[])) "
    "AS r(sku, received) WHERE po_lines.po_id = :po_id AND po_lines.sku = r.sku")


async def set_received(conn: AsyncConnection, po_id: str, received: dict[str, int]) -> None:
    """Units received so far on each of an order's lines, in one statement (a receipt of a 20-line
    order ran 20 UPDATEs: `bench/e2e.py`'s supplier posts ~13,000 receipts in a replay)."""
    if received:
        skus = sorted(received)
        await conn.execute(text(_SET_RECEIVED_SQL), {"po_id": po_id, "skus": skus,
                                                     "received": [received[sku] for sku in skus]})


async def known_store(conn: AsyncConnection, store_id: str) -> bool:
    return (await conn.execute(select(stores.c.store_id).where(stores.c.store_id == store_id))).first() is not None


async def known_skus(conn: AsyncConnection, skus: Iterable[str]) -> set[str]:
    skus = list(skus)
    found = {row.sku for row in await conn.execute(select(products.c.sku).where(any_of(products.c.sku, skus)))}
    missing = sorted(set(skus) - found)
    if missing:  # sold but not in the catalog: stock is keyed by store first, so this reads the table
        found |= {row.sku for row in await conn.execute(select(stock.c.sku).where(any_of(stock.c.sku, missing)).distinct())}
    return found


async def event_time(conn: AsyncConnection) -> Any:
    return (await conn.execute(select(func.max(stores.c.as_of)))).scalar()
