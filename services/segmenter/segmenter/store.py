"""segmenter's tables and the queries its handlers need."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from crm_shared.consumer import applied_events_table
from crm_shared.db import any_of, column_types, insert_from_recordset, recordset, recordset_rows, upsert_tail
from crm_shared.outbox import outbox_table
from crm_shared.serde import encode_key
from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    case,
    delete,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID, insert
from sqlalchemy.ext.asyncio import AsyncConnection

metadata = MetaData()
applied_events = applied_events_table(metadata)
outbox = outbox_table(metadata)

members = Table(
    "members", metadata,
    Column("member_id", String(64), primary_key=True),
    Column("as_of", DateTime(timezone=True), nullable=False),
    Column("first_purchase_at", DateTime(timezone=True)),
    Column("last_purchase_at", DateTime(timezone=True)),
    Column("visits", Integer, nullable=False),
    Column("monetary", Float, nullable=False),
    Column("basket_value", Float, nullable=False),
    Column("basket_size", Float, nullable=False),
    Column("interval_mean", Float),
    Column("interval_spread", Float),
    Column("features", JSONB, nullable=False),
    Column("facts", JSONB, nullable=False, doc="what the persona rules read, besides dormancy"),
    Column("value_tier", String(40)),
    Column("persona", String(40)),
    Column("cluster", String(40)),
    Column("scores", JSONB, doc="RFM scores [r, f, m] held (for the dead band)"),
    Column("p_active", Float),
    Column("expected_next_visit_at", DateTime(timezone=True)),
    Column("profile_event_id", UUID(as_uuid=True), nullable=False),
    Index("ix_members_value_tier", "value_tier"),
    Index("ix_members_persona", "persona"),
    Index("ix_members_cluster", "cluster"),
)

segment_changes = Table(
    "segment_changes", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("member_id", String(64), nullable=False),
    Column("dimension", String(20), nullable=False),
    Column("old", String(40)),
    Column("new", String(40)),
    Column("reason", Text, nullable=False),
    Column("as_of", DateTime(timezone=True), nullable=False),
    Index("ix_segment_changes_member", "member_id", "id"),
)

segment_sizes = Table(
    "segment_sizes", metadata,
    Column("day", Date, primary_key=True),
    Column("dimension", String(20), primary_key=True),
    Column("segment", String(40), primary_key=True),
    Column("size", Integer, nullable=False),
)

erased_members = Table(
    "erased_members", metadata,
    Column("member_id", String(64), primary_key=True),
    Column("erased_at", DateTime(timezone=True), nullable=False),
)

model_state = Table(
    "model_state", metadata,
    Column("name", String(64), primary_key=True),
    Column("state", LargeBinary, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

baskets = Table(
    "baskets", metadata,
    Column("basket_id", String(100), primary_key=True),
    Column("store_id", String(64), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("items", ARRAY(Text), nullable=False),
    Index("ix_baskets_at", "at"),
)

product_daily = Table(
    "product_daily", metadata,
    Column("store_id", String(64), primary_key=True),
    Column("sku", String(64), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("quantity", BigInteger, nullable=False),
    Column("revenue", Numeric, nullable=False),
    Column("baskets", Integer, nullable=False),
    Index("ix_product_daily_day", "day"),
    Index("ix_product_daily_sku_day", "sku", "day"),
)

products = Table(
    "products", metadata,
    Column("sku", String(64), primary_key=True),
    Column("description", String(300), nullable=False),
)

rules_published = Table(
    "rules_published", metadata,
    Column("scope", String(64), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("published_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


# --- members ----------------------------------------------------------------------------------

async def load_members(conn: AsyncConnection, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    if not ids:
        return {}
    rows = await conn.execute(select(members).where(any_of(members.c.member_id, list(ids))))
    return {row.member_id: dict(row._mapping) for row in rows}


# What a review reads of each member (`member_pages(conn, size, REVIEW_COLUMNS)`): what re-deciding its
# segments needs. Its features (JSON, the largest column) only where no cluster is held yet (a member
# first seen while the clusters were being seeded): the review predicts one from them.
REVIEW_COLUMNS = (*(c for c in members.c if c.name not in ("as_of", "features", "profile_event_id")),
                  case((members.c.cluster.is_(None), members.c.features)).label("features"))
# What a churn refit reads of each member (`handlers.summary_of_row`): no JSON at all.
SUMMARY_COLUMNS = tuple(members.c[name] for name in ("member_id", "first_purchase_at", "last_purchase_at", "visits",
                                                     "interval_mean", "interval_spread"))


async def member_pages(conn: AsyncConnection, size: int,
                       columns: Sequence[Any] = tuple(members.c)) -> AsyncIterator[list[dict[str, Any]]]:
    """Every member, `size` at a time, in member id order (keyset: each page starts after the last);
    `columns` (member_id among them) of each."""
    after: str | None = None
    while True:
        query = select(*columns).order_by(members.c.member_id).limit(size)
        if after is not None:
            query = query.where(members.c.member_id > after)
        page = [dict(row._mapping) for row in await conn.execute(query)]
        if not page:
            return
        yield page
        if len(page) < size:  # the last page: no need to ask for an empty one
            return
        after = page[-1]["member_id"]


async def erased_among(conn: AsyncConnection, ids: Sequence[str]) -> set[str]:
    if not ids:
        return set()
    rows = await conn.execute(select(erased_members.c.member_id).where(any_of(erased_members.c.member_id, list(ids))))
    return {row.member_id for row in rows}


MEMBER_COLUMNS = tuple(c.name for c in members.columns)
# One statement whatever the number of rows (`insert_from_recordset` says why): an executemany ran the
# upsert once per member, a sweep's page (thousands) at a time.
_SAVE_MEMBERS_SQL = insert_from_recordset(members, MEMBER_COLUMNS, tail=upsert_tail(["member_id"], MEMBER_COLUMNS))


async def save_members(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Upserted in one statement; a member appears at most once in `rows` (an upsert may not touch a row twice)."""
    if rows:
        await conn.execute(text(_SAVE_MEMBERS_SQL), {"rows": recordset_rows(rows, MEMBER_COLUMNS)})


SEGMENT_COLUMNS = ("member_id", "value_tier", "persona", "cluster", "scores", "p_active", "expected_next_visit_at")
_SAVE_SEGMENTS_SQL = (
    "UPDATE members SET " + ", ".join(f"{c} = rows.{c}" for c in SEGMENT_COLUMNS[1:])
    + f" FROM {recordset('rows', column_types(members, SEGMENT_COLUMNS))} WHERE members.member_id = rows.member_id")


async def save_segments(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """A review's decisions: the segment columns of members that exist (the rest of each row as it is),
    in one statement."""
    if rows:
        await conn.execute(text(_SAVE_SEGMENTS_SQL), {"rows": recordset_rows(rows, SEGMENT_COLUMNS)})


CHANGE_COLUMNS = ("member_id", "dimension", "old", "new", "reason", "as_of")
_RECORD_CHANGES_SQL = insert_from_recordset(segment_changes, CHANGE_COLUMNS, tail="")


async def record_changes(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """In the order given: the serial id is each member's history order."""
    if rows:
        await conn.execute(text(_RECORD_CHANGES_SQL), {"rows": recordset_rows(rows, CHANGE_COLUMNS)})


async def history(conn: AsyncConnection, member_id: str, limit: int = 100) -> list[dict[str, Any]]:
    rows = await conn.execute(select(segment_changes).where(segment_changes.c.member_id == member_id)
                              .order_by(segment_changes.c.id.desc()).limit(limit))
    return [dict(row._mapping) for row in rows]


MEMBERS_LOCK = 0x53454732  # profile batches and erasures take turns (transaction-scoped advisory lock)


async def lock_members(conn: AsyncConnection) -> None:
    await conn.execute(select(func.pg_advisory_xact_lock(MEMBERS_LOCK)))


async def erase(conn: AsyncConnection, member_id: str, at: datetime) -> None:
    await conn.execute(delete(members).where(members.c.member_id == member_id))
    await conn.execute(delete(segment_changes).where(segment_changes.c.member_id == member_id))
    # what was decided about them and not yet published does not go out any more
    await conn.execute(delete(outbox).where(outbox.c.key == encode_key(member_id), outbox.c.published_at.is_(None)))
    await conn.execute(insert(erased_members).values(member_id=member_id, erased_at=at).on_conflict_do_nothing())


async def active_population(conn: AsyncConnection, active_days: int,
                            clock: datetime) -> list[tuple[float, int, float, float, float]]:
    """(recency days at `clock`, visits, monetary, basket value, basket size) of members seen lately."""
    recency = func.extract("epoch", clock - members.c.last_purchase_at) / 86400.0
    rows = await conn.execute(
        select(recency, members.c.visits, members.c.monetary, members.c.basket_value, members.c.basket_size)
        .where(members.c.last_purchase_at.is_not(None))
        .where(members.c.last_purchase_at >= clock - timedelta(days=active_days)))
    return [(float(r[0]), int(r[1]), float(r[2]), float(r[3]), float(r[4])) for r in rows]


async def segment_counts(conn: AsyncConnection) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {"value_tier": {}, "persona": {}, "cluster": {}}
    for dimension in out:
        column = members.c[dimension]
        rows = await conn.execute(select(column, func.count()).where(column.is_not(None)).group_by(column))
        out[dimension] = {row[0]: int(row[1]) for row in rows}
    return out


async def record_sizes(conn: AsyncConnection, day: date, known: dict[str, Sequence[str]]) -> None:
    """Every known segment's size that day, 0 included (an emptied segment must not keep its last size),
    counted and written by one statement."""
    dimensions = [d for d, names in known.items() for _ in names]
    segments = [n for names in known.values() for n in names]
    await conn.execute(text("""
        INSERT INTO segment_sizes (day, dimension, segment, size)
        SELECT :day, d, s, sum(n)::int FROM (
            SELECT v.d, v.s, count(*) AS n
            FROM members m
            CROSS JOIN LATERAL (VALUES ('value_tier', m.value_tier), ('persona', m.persona),
                                       ('cluster', m.cluster)) AS v(d, s)
            WHERE v.s IS NOT NULL GROUP BY v.d, v.s
            UNION ALL
            SELECT k.d, k.s, 0 FROM unnest(CAST(:dimensions AS text[]), CAST(:segments AS text[])) AS k(d, s)
        ) AS counted (d, s, n)
        GROUP BY d, s
        ON CONFLICT (day, dimension, segment) DO UPDATE SET size = excluded.size"""),
        {"day": day, "dimensions": dimensions, "segments": segments})


async def sizes_by_day(conn: AsyncConnection, dimension: str, since: date | None) -> dict[date, dict[str, int]]:
    """Every segment's recorded size per event day of one dimension (from `since` on)."""
    query = select(segment_sizes.c.day, segment_sizes.c.segment, segment_sizes.c.size).where(
        segment_sizes.c.dimension == dimension).order_by(segment_sizes.c.day, segment_sizes.c.segment)
    if since is not None:
        query = query.where(segment_sizes.c.day >= since)
    out: dict[date, dict[str, int]] = {}
    for row in await conn.execute(query):
        out.setdefault(row.day, {})[row.segment] = int(row.size)
    return out


async def sizes_over_time(conn: AsyncConnection, dimension: str, segment: str) -> dict[date, int]:
    rows = await conn.execute(select(segment_sizes.c.day, segment_sizes.c.size)
                              .where(segment_sizes.c.dimension == dimension, segment_sizes.c.segment == segment))
    return {row.day: int(row.size) for row in rows}


async def segment_members(conn: AsyncConnection, dimension: str, segment: str, limit: int | None = None,
                          ) -> list[dict[str, Any]]:
    query = (select(members.c.member_id, members.c.features, members.c.monetary)
             .where(members.c[dimension] == segment).order_by(members.c.monetary.desc(), members.c.member_id))
    if limit is not None:
        query = query.limit(limit)
    return [dict(row._mapping) for row in await conn.execute(query)]


async def features_sample(conn: AsyncConnection, dimension: str, segment: str, limit: int = 20_000,
                          ) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """Features inside and outside a segment (a deterministic sample of each when large)."""
    column = members.c[dimension]
    inside = await conn.execute(select(members.c.features).where(column == segment)
                                .order_by(func.md5(members.c.member_id)).limit(limit))
    outside = await conn.execute(select(members.c.features).where(column.is_distinct_from(segment))
                                 .order_by(func.md5(members.c.member_id)).limit(limit))
    return [row[0] for row in inside], [row[0] for row in outside]


async def members_in(conn: AsyncConnection, dimension: str, segment: str, *, after: str | None,
                     limit: int) -> list[str]:
    query = select(members.c.member_id).where(members.c[dimension] == segment)
    if after is not None:
        query = query.where(members.c.member_id > after)
    rows = await conn.execute(query.order_by(members.c.member_id).limit(limit))
    return [row[0] for row in rows]


# --- model state and the clock ----------------------------------------------------------------

async def load_state(conn: AsyncConnection, name: str) -> bytes | None:
    value = (await conn.execute(select(model_state.c.state).where(model_state.c.name == name))).scalar_one_or_none()
    return bytes(value) if value is not None else None


async def save_state(conn: AsyncConnection, name: str, state: bytes) -> None:
    statement = insert(model_state).values(name=name, state=state)
    await conn.execute(statement.on_conflict_do_update(index_elements=[model_state.c.name],
                                                       set_={"state": statement.excluded.state, "updated_at": func.now()}))


async def load_clock(conn: AsyncConnection) -> datetime | None:
    state = await load_state(conn, "clock")
    return datetime.fromisoformat(state.decode()) if state else None


async def save_clock(conn: AsyncConnection, clock: datetime) -> None:
    await save_state(conn, "clock", clock.isoformat().encode())


# --- baskets and product sales ----------------------------------------------------------------

BASKET_COLUMNS = ("basket_id", "store_id", "at", "items")
_ADD_BASKETS_SQL = insert_from_recordset(baskets, BASKET_COLUMNS)


async def add_baskets(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(text(_ADD_BASKETS_SQL), {"rows": recordset_rows(rows, BASKET_COLUMNS)})


async def baskets_since(conn: AsyncConnection, cutoff: datetime | None) -> list[tuple[str, str, datetime, list[str]]]:
    query = select(baskets.c.basket_id, baskets.c.store_id, baskets.c.at, baskets.c["items"]).order_by(baskets.c.at)
    if cutoff is not None:
        query = query.where(baskets.c.at >= cutoff)
    return [(r[0], r[1], r[2], list(r[3])) for r in await conn.execute(query)]


async def drop_baskets_before(conn: AsyncConnection, cutoff: datetime) -> int:
    result = await conn.execute(delete(baskets).where(baskets.c.at < cutoff))
    return int(result.rowcount or 0)


PRODUCT_SALES_COLUMNS = ("store_id", "sku", "day", "quantity", "revenue", "baskets")
_ADD_PRODUCT_SALES_SQL = insert_from_recordset(
    product_daily, PRODUCT_SALES_COLUMNS,
    tail="ON CONFLICT (store_id, sku, day) DO UPDATE SET quantity = product_daily.quantity + excluded.quantity, "
         "revenue = product_daily.revenue + excluded.revenue, baskets = product_daily.baskets + excluded.baskets")


async def add_product_sales(conn: AsyncConnection, rows: Iterable[tuple[str, str, date, int, Decimal, int]]) -> None:
    """Added to each store × SKU × day in one statement (thousands of rows a batch in a replay; an
    executemany ran the upsert once per row). Each store × SKU × day at most once in `rows`."""
    values = [dict(zip(PRODUCT_SALES_COLUMNS, row, strict=True)) for row in rows]
    if values:
        await conn.execute(text(_ADD_PRODUCT_SALES_SQL), {"rows": recordset_rows(values, PRODUCT_SALES_COLUMNS)})


# A batch names every product it sold; most are named already, and the same: no write for those
# (an update per product per batch was a dead row each, and an executemany of ~2,000 rows a batch).
_NAME_PRODUCTS_SQL = insert_from_recordset(
    products, ("sku", "description"),
    tail="ON CONFLICT (sku) DO UPDATE SET description = excluded.description "
         "WHERE products.description IS DISTINCT FROM excluded.description")


async def name_products(conn: AsyncConnection, names: dict[str, str]) -> None:
    """Products' latest descriptions, in one statement."""
    if names:
        rows = [{"sku": sku, "description": description[:300]} for sku, description in sorted(names.items())]
        await conn.execute(text(_NAME_PRODUCTS_SQL), {"rows": recordset_rows(rows, ("sku", "description"))})


async def descriptions(conn: AsyncConnection, skus: Sequence[str]) -> dict[str, str]:
    if not skus:
        return {}
    rows = await conn.execute(select(products.c.sku, products.c.description).where(any_of(products.c.sku, list(skus))))
    return {r.sku: r.description for r in rows}


async def sales_clock(conn: AsyncConnection) -> date | None:
    value = (await conn.execute(select(func.max(product_daily.c.day)))).scalar_one_or_none()
    return value if isinstance(value, date) else None


async def product_ranking(conn: AsyncConnection, *, store: str | None, start: date, end: date, by: str,
                          worst: bool, limit: int) -> list[dict[str, Any]]:
    measure = product_daily.c.revenue if by == "revenue" else product_daily.c.quantity
    total = func.sum(measure).label("total")
    query = (select(product_daily.c.sku, func.sum(product_daily.c.quantity).label("quantity"),
                    func.sum(product_daily.c.revenue).label("revenue"), func.sum(product_daily.c.baskets).label("baskets"),
                    func.count(func.distinct(product_daily.c.day)).label("selling_days"), total)
             .where(product_daily.c.day >= start, product_daily.c.day <= end).group_by(product_daily.c.sku))
    if store is not None:
        query = query.where(product_daily.c.store_id == store)
    query = query.order_by(total.asc() if worst else total.desc(), product_daily.c.sku).limit(limit)
    return [dict(row._mapping) for row in await conn.execute(query)]


async def product_days(conn: AsyncConnection, sku: str, store: str | None) -> dict[date, float]:
    query = select(product_daily.c.day, func.sum(product_daily.c.quantity)).where(product_daily.c.sku == sku)
    if store is not None:
        query = query.where(product_daily.c.store_id == store)
    rows = await conn.execute(query.group_by(product_daily.c.day))
    return {row[0]: float(row[1]) for row in rows}


async def period_totals(conn: AsyncConnection, skus: Sequence[str], *, store: str | None, start: date,
                        end: date) -> dict[str, float]:
    if not skus:
        return {}
    query = (select(product_daily.c.sku, func.sum(product_daily.c.quantity))
             .where(any_of(product_daily.c.sku, list(skus)), product_daily.c.day >= start, product_daily.c.day <= end)
             .group_by(product_daily.c.sku))
    if store is not None:
        query = query.where(product_daily.c.store_id == store)
    return {row[0]: float(row[1]) for row in await conn.execute(query)}


async def slow_movers(conn: AsyncConnection, *, store: str | None, since: date, limit: int) -> list[dict[str, Any]]:
    """Products that sold before but not since `since`, or hardly: fewest units since, longest idle first."""
    recent = func.sum(product_daily.c.quantity).filter(product_daily.c.day >= since)
    query = (select(product_daily.c.sku, func.max(product_daily.c.day).label("last_sold"),
                    func.coalesce(recent, 0).label("units_since"), func.sum(product_daily.c.quantity).label("units_ever"))
             .group_by(product_daily.c.sku).having(func.sum(product_daily.c.quantity) > 0))
    if store is not None:
        query = query.where(product_daily.c.store_id == store)
    query = query.order_by(text("units_since"), text("last_sold"), product_daily.c.sku).limit(limit)
    return [dict(row._mapping) for row in await conn.execute(query)]


async def store_ids(conn: AsyncConnection) -> list[str]:
    return [row[0] for row in await conn.execute(select(baskets.c.store_id).distinct().order_by(baskets.c.store_id))]


async def last_fingerprints(conn: AsyncConnection) -> dict[str, str]:
    return {row.scope: row.fingerprint for row in await conn.execute(select(rules_published))}


async def save_fingerprint(conn: AsyncConnection, scope: str, fingerprint: str) -> None:
    statement = insert(rules_published).values(scope=scope, fingerprint=fingerprint)
    await conn.execute(statement.on_conflict_do_update(index_elements=[rules_published.c.scope],
                                                       set_={"fingerprint": fingerprint, "published_at": func.now()}))

