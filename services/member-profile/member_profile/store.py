"""member-profile's tables and the unit of work that applies a batch of sales."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any

from crm_shared.consumer import applied_events_table
from crm_shared.db import any_of, insert_from_recordset, recordset_rows, upsert_tail
from crm_shared.events import Envelope, MemberSegmentChanged, Product, Sale, TierChanged, member_event
from crm_shared.outbox import outbox_table
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    cast,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID, array, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from member_profile import SERVICE_NAME
from member_profile.domain import Profile, RfmCutpoints, Rhythm
from member_profile.loyalty import Lot
from member_profile.walk import MemberBook, TierMove, Walked

metadata = MetaData()
applied_events = applied_events_table(metadata)

profiles = Table(
    "profiles", metadata,
    Column("member_id", String(64), primary_key=True),
    Column("first_purchase_at", DateTime(timezone=True)),
    Column("last_purchase_at", DateTime(timezone=True)),
    Column("frequency", Integer, nullable=False),
    Column("returns", Integer, nullable=False),
    Column("monetary", Numeric, nullable=False),
    Column("gross_sales", Numeric, nullable=False),
    Column("items_bought", BigInteger, nullable=False),
    Column("lines_bought", BigInteger, nullable=False),
    Column("items_returned", BigInteger, nullable=False),
    Column("items_on_discount", BigInteger, nullable=False),
    Column("discount_total", Numeric, nullable=False),
    Column("store_visits", JSONB, nullable=False),
    Column("hour_of_day", JSONB, nullable=False),
    Column("weekday", JSONB, nullable=False),
    Column("rhythm_last_visit_day", Date),
    Column("rhythm_intervals", Integer, nullable=False),
    Column("rhythm_mean_days", Float, nullable=False),
    Column("rhythm_m2", Float, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("category_items", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("brand_items", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Index("ix_profiles_monetary", "monetary"),
)

purchases = Table(
    "purchases", metadata,
    Column("event_id", UUID(as_uuid=True), primary_key=True),
    Column("member_id", String(64), nullable=False),
    Column("store_id", String(64), nullable=False),
    Column("sale_id", String(64), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    # The calendar day at the till (the event's own offset); PostgreSQL hands timestamps back in UTC.
    Column("visit_day", Date),
    Column("total", Numeric, nullable=False),
    Column("item_count", Integer, nullable=False),
    Column("lines", JSONB, nullable=False),
    Index("ix_purchases_member_time", "member_id", "occurred_at"),
)

watermark = Table(
    "watermark", metadata,
    Column("id", Integer, primary_key=True),
    Column("as_of", DateTime(timezone=True), nullable=False),
)

# Personal data: only here and in `consents`; erasure empties these columns.
members = Table(
    "members", metadata,
    Column("member_id", String(64), primary_key=True),
    Column("given_name", String(100)),
    Column("family_name", String(100)),
    Column("email", String(254)),
    Column("phone", String(16)),
    Column("card_number", String(19)),
    Column("birth_date", Date),
    Column("home_store", String(64)),
    Column("enrolled_at", DateTime(timezone=True), nullable=False),
    Column("erased_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ux_members_phone", "phone", unique=True, postgresql_where=text("phone IS NOT NULL")),
    Index("ux_members_email", "email", unique=True, postgresql_where=text("email IS NOT NULL")),
    Index("ux_members_card", "card_number", unique=True, postgresql_where=text("card_number IS NOT NULL")),
)

consents = Table(
    "consents", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("member_id", String(64), nullable=False),
    Column("channel", String(8), nullable=False),
    Column("granted", Boolean, nullable=False),
    Column("given_at", DateTime(timezone=True), nullable=False),
    Column("source", String(64), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_consents_member_channel", "member_id", "channel", "id"),
)

points_lots = Table(
    "points_lots", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("member_id", String(64), nullable=False),
    Column("points", BigInteger, nullable=False),
    Column("remaining", BigInteger, nullable=False),
    Column("earned_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("cause", String(100), nullable=False),
    Index("ux_points_lots_cause", "member_id", "cause", unique=True),
    Index("ix_points_lots_live", "member_id", "expires_at", postgresql_where=text("remaining > 0")),
)

# Every movement of points, never updated: earn, reverse (a return), redeem, expire.
points_ledger = Table(
    "points_ledger", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("member_id", String(64), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("points", BigInteger, nullable=False),
    Column("cause", String(200), nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ux_points_ledger_cause", "member_id", "kind", "cause", unique=True),
)

redemptions = Table(
    "redemptions", metadata,
    Column("member_id", String(64), primary_key=True),
    Column("idempotency_key", String(100), primary_key=True),
    Column("points", BigInteger, nullable=False),
    Column("balance_after", BigInteger, nullable=False),
    Column("redeemed_at", DateTime(timezone=True), nullable=False),
)

tiers = Table(
    "tiers", metadata,
    Column("member_id", String(64), primary_key=True),
    Column("tier", String(8), nullable=False),
    Column("since", DateTime(timezone=True), nullable=False),
    Column("rolling_spend", Numeric, nullable=False),
)

outbox = outbox_table(metadata)

products = Table(
    "products", metadata,
    Column("sku", String(64), primary_key=True),
    Column("category", Text),
    Column("brand", Text),
    Column("department", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

_COUNTERS = ("frequency", "returns", "items_bought", "lines_bought", "items_returned", "items_on_discount")
_MONEY = ("monetary", "gross_sales", "discount_total")


def profile_from_row(row: Any) -> Profile:
    m = row._mapping
    return Profile(
        member_id=m["member_id"], first_purchase_at=m["first_purchase_at"], last_purchase_at=m["last_purchase_at"],
        **{name: int(m[name]) for name in _COUNTERS}, **{name: Decimal(m[name]) for name in _MONEY},
        store_visits=m["store_visits"], hour_of_day=m["hour_of_day"], weekday=m["weekday"],
        rhythm=Rhythm(m["rhythm_last_visit_day"], m["rhythm_intervals"], m["rhythm_mean_days"], m["rhythm_m2"]),
        category_items=m["category_items"], brand_items=m["brand_items"],
    )


def profile_row(profile: Profile) -> dict[str, Any]:
    return {
        "member_id": profile.member_id, "first_purchase_at": profile.first_purchase_at,
        "last_purchase_at": profile.last_purchase_at,
        **{name: getattr(profile, name) for name in _COUNTERS + _MONEY},
        "store_visits": dict(profile.store_visits), "hour_of_day": dict(profile.hour_of_day),
        "weekday": dict(profile.weekday), "rhythm_last_visit_day": profile.rhythm.last_visit_day,
        "rhythm_intervals": profile.rhythm.intervals, "rhythm_mean_days": profile.rhythm.mean_days,
        "rhythm_m2": profile.rhythm.m2,
        "category_items": dict(profile.category_items), "brand_items": dict(profile.brand_items),
    }



member_segments = Table(
    "member_segments", metadata,
    Column("member_id", String(64), primary_key=True),
    Column("value_tier", String(40)),
    Column("persona", String(40)),
    Column("cluster", String(40)),
    Column("as_of", DateTime(timezone=True), nullable=False),
    Index("ix_member_segments_value_tier", "value_tier"),
    Index("ix_member_segments_persona", "persona"),
    Index("ix_member_segments_cluster", "cluster"),
)

async def load_profiles(conn: AsyncConnection, member_ids: Iterable[str]) -> dict[str, Profile]:
    ids = list(member_ids)
    if not ids:
        return {}
    rows = await conn.execute(select(profiles).where(any_of(profiles.c.member_id, ids)))
    return {row.member_id: profile_from_row(row) for row in rows}


PURCHASE_COLUMNS = tuple(c.name for c in purchases.columns)
# One statement whatever the number of rows (an executemany ran the INSERT once per sale).
_RECORD_PURCHASES_SQL = insert_from_recordset(purchases, PURCHASE_COLUMNS)


async def record_purchases(conn: AsyncConnection, events: list[Envelope[Sale]], watermark_at: datetime) -> None:
    """A batch's history rows and the event-time watermark it reached."""
    await conn.execute(
        insert(watermark).values(id=1, as_of=watermark_at)
        .on_conflict_do_update(index_elements=["id"], set_={"as_of": func.greatest(watermark.c.as_of, watermark_at)}))
    members = [e for e in events if e.payload.member_id is not None]
    if not members:
        return
    await conn.execute(text(_RECORD_PURCHASES_SQL), {"rows": recordset_rows(({
        "event_id": e.event_id, "member_id": e.payload.member_id, "store_id": e.payload.store_id,
        "sale_id": e.payload.sale_id, "kind": e.payload.kind, "occurred_at": e.payload.occurred_at,
        "visit_day": e.payload.occurred_at.date(),
        "total": e.payload.total, "item_count": sum(line.quantity for line in e.payload.lines),
        "lines": [{"sku": line.sku, "description": line.description, "quantity": line.quantity,
                   "unit_price": str(line.unit_price)} for line in e.payload.lines[:50]],
    } for e in members), PURCHASE_COLUMNS)})


PROFILE_COLUMNS = tuple(c.name for c in profiles.columns if c.name != "updated_at")
# One upsert whatever the number of profiles (an executemany ran it once per member).
_SAVE_PROFILES_SQL = insert_from_recordset(
    profiles, PROFILE_COLUMNS, tail=upsert_tail(["member_id"], PROFILE_COLUMNS, also="updated_at = now()"))


async def save_profiles(conn: AsyncConnection, changed: Iterable[Profile]) -> None:
    """Each member at most once in `changed` (an upsert may not touch a row twice)."""
    rows = [profile_row(profile) for profile in changed]
    if rows:
        await conn.execute(text(_SAVE_PROFILES_SQL), {"rows": recordset_rows(rows, PROFILE_COLUMNS)})


async def load_books(conn: AsyncConnection, buyers: set[str], horizon: datetime,
                     leaving_until: datetime) -> dict[str, MemberBook]:
    """Before the batch's purchases are written: what the walk needs of the batch's buyers, and of
    every tiered member with a stored purchase that may leave the rolling window during the batch."""
    ids = sorted(buyers)
    leaving: dict[str, list[tuple[datetime, Decimal]]] = {}
    if leaving_until > horizon:
        tiered = select(tiers.c.member_id).where(tiers.c.tier != "member")
        rows = await conn.execute(
            select(purchases.c.member_id, purchases.c.occurred_at, purchases.c.total)
            .where(purchases.c.occurred_at > horizon, purchases.c.occurred_at <= leaving_until,
                   any_of(purchases.c.member_id, ids) | purchases.c.member_id.in_(tiered)))
        for row in rows:
            leaving.setdefault(row.member_id, []).append((row.occurred_at, Decimal(row.total)))
    involved = sorted(set(ids) | set(leaving))
    if not involved:
        return {}
    spend = {row[0]: Decimal(row[1]) for row in await conn.execute(
        select(purchases.c.member_id, func.sum(purchases.c.total))
        .where(any_of(purchases.c.member_id, involved), purchases.c.occurred_at > horizon)
        .group_by(purchases.c.member_id))}
    found = await load_profiles(conn, involved)
    lots = await load_lots(conn, involved, lock=True)
    held = await current_tiers(conn, involved)
    return {m: MemberBook(found.get(m) or Profile(m), tier=held.get(m, "member"), lots=lots.get(m, []),
                          spend_base=spend.get(m, Decimal("0")), leaving=sorted(leaving.get(m, [])))
            for m in involved}


async def load_visit_days(conn: AsyncConnection, books: dict[str, MemberBook], members: set[str]) -> None:
    """Stored visit days of the members whose rhythm the batch rebuilds."""
    if not members:
        return
    for member in members:
        books[member].prior_visit_days = []
    for row in await conn.execute(select(purchases.c.member_id, purchases.c.visit_day)
                                  .where(any_of(purchases.c.member_id, sorted(members)), purchases.c.kind == "sale")):
        books[row.member_id].prior_visit_days.append(row.visit_day)  # type: ignore[union-attr]


async def as_of(conn: AsyncConnection) -> datetime | None:
    return (await conn.execute(select(watermark.c.as_of).where(watermark.c.id == 1))).scalar()


async def history(conn: AsyncConnection, member_id: str, *, limit: int, before: datetime | None) -> list[dict[str, Any]]:
    query = (select(purchases.c.sale_id, purchases.c.store_id, purchases.c.kind, purchases.c.occurred_at,
                    purchases.c.total, purchases.c.item_count, purchases.c.lines)
             .where(purchases.c.member_id == member_id).order_by(purchases.c.occurred_at.desc()).limit(limit))
    if before is not None:
        query = query.where(purchases.c.occurred_at < before)
    return [dict(row._mapping) for row in await conn.execute(query)]


async def top_members(conn: AsyncConnection, *, min_monetary: Decimal | None, limit: int, offset: int,
                      tier: str | None = None, segment: str | None = None) -> list[Profile]:
    query = select(profiles).order_by(profiles.c.monetary.desc(), profiles.c.member_id).limit(limit).offset(offset)
    if segment is not None:  # any dimension: value tier, persona or cluster (names do not overlap)
        held = member_segments.c
        query = query.where(profiles.c.member_id.in_(select(held.member_id).where(
            (held.value_tier == segment) | (held.persona == segment) | (held.cluster == segment))))
    if min_monetary is not None:
        query = query.where(profiles.c.monetary >= min_monetary)
    if tier == "member":
        query = query.where(profiles.c.member_id.not_in(select(tiers.c.member_id).where(tiers.c.tier != "member")))
    elif tier is not None:
        query = query.where(profiles.c.member_id.in_(select(tiers.c.member_id).where(tiers.c.tier == tier)))
    return [profile_from_row(row) for row in await conn.execute(query)]


async def rfm_cutpoints(conn: AsyncConnection) -> RfmCutpoints | None:
    """Quintile cut points of recency, frequency and monetary over members who have bought."""
    latest = await as_of(conn)
    if latest is None:
        return None
    fractions = array([0.2, 0.4, 0.6, 0.8], type_=Float)
    recency = cast(func.extract("epoch", latest - profiles.c.last_purchase_at) / 86400, Float)
    row = (await conn.execute(select(
        func.percentile_cont(fractions).within_group(recency),
        func.percentile_cont(fractions).within_group(cast(profiles.c.frequency, Float)),
        func.percentile_cont(fractions).within_group(cast(profiles.c.monetary, Float)),
    ).where(profiles.c.frequency > 0))).one()
    if row[0] is None:
        return None
    return RfmCutpoints(tuple(row[0]), tuple(row[1]), tuple(float(v) for v in row[2]))


async def ping(conn: AsyncConnection) -> None:
    await conn.execute(text("SELECT 1"))


# --- loyalty, tiers and the events member-profile publishes ------------------------------------

async def load_lots(conn: AsyncConnection, member_ids: Iterable[str], *, lock: bool = False) -> dict[str, list[Lot]]:
    query = (select(points_lots.c.id, points_lots.c.member_id, points_lots.c.remaining, points_lots.c.expires_at,
                    points_lots.c.earned_at)
             .where(any_of(points_lots.c.member_id, member_ids), points_lots.c.remaining > 0)
             .order_by(points_lots.c.id))
    if lock:
        query = query.with_for_update()
    lots: dict[str, list[Lot]] = {}
    for row in await conn.execute(query):
        lots.setdefault(row.member_id, []).append(Lot(row.id, row.remaining, row.expires_at, row.earned_at))
    return lots


_TAKE_POINTS_SQL = ("UPDATE points_lots SET remaining = points_lots.remaining - taken.points "
                    "FROM unnest(CAST(:ids AS bigint[]), CAST(:points AS bigint[])) AS taken(id, points) "
                    "WHERE points_lots.id = taken.id")


async def take_points(conn: AsyncConnection, taken: list[tuple[int, int]]) -> None:
    """Take points from lots, in one statement (a statement per lot was 2,646 round trips over the
    Online Retail year). A lot named twice loses the sum: an UPDATE ... FROM applies one row per lot."""
    per_lot: dict[int, int] = {}
    for lot_id, points in taken:
        per_lot[lot_id] = per_lot.get(lot_id, 0) + points
    if per_lot:
        ids = sorted(per_lot)
        await conn.execute(text(_TAKE_POINTS_SQL), {"ids": ids, "points": [per_lot[i] for i in ids]})


LEDGER_COLUMNS = ("member_id", "kind", "points", "cause", "occurred_at")
_LEDGER_SQL = insert_from_recordset(points_ledger, LEDGER_COLUMNS)


async def _ledger(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """In the order given (the serial id is the statement's order)."""
    if rows:
        await conn.execute(text(_LEDGER_SQL), {"rows": recordset_rows(rows, LEDGER_COLUMNS)})


_NEW_LOT_COLUMNS = ("member_id", "points", "remaining", "earned_at", "expires_at", "cause")
# One statement whatever the number of lots (an `insert().returning()` of many rows would be planned
# once per distinct row count: see `insert_from_recordset`).
_NEW_LOTS_SQL = insert_from_recordset(points_lots, _NEW_LOT_COLUMNS,
                                      tail="ON CONFLICT DO NOTHING RETURNING id, member_id, cause")


async def save_points(conn: AsyncConnection, walked: Walked) -> None:
    """The walk's new lots (numbered by the database now), what it took from lots, and its ledger rows."""
    numbered: dict[int, int] = {}
    if walked.new_lots:
        taken = walked.taken
        rows = [{**{k: v for k, v in lot.items() if k != "id"}, "remaining": lot["points"] - taken.get(lot["id"], 0)}
                for lot in walked.new_lots]
        result = await conn.execute(text(_NEW_LOTS_SQL), {"rows": recordset_rows(rows, _NEW_LOT_COLUMNS)})
        ids = {(row.member_id, row.cause): row.id for row in result}
        numbered = {lot["id"]: ids[(lot["member_id"], lot["cause"])] for lot in walked.new_lots}
    await take_points(conn, [(lot_id, points) for lot_id, points in walked.taken.items()
                             if lot_id not in numbered and points])
    await _ledger(conn, [
        {k: v for k, v in row.items() if k != "lot"} | ({"cause": f"lot:{numbered.get(row['lot'], row['lot'])}"}
                                                      if "lot" in row else {})
        for row in walked.ledger])


async def points_balances(conn: AsyncConnection, member_ids: Iterable[str], as_of: datetime | None) -> dict[str, int]:
    ids = list(member_ids)
    if not ids or as_of is None:
        return {}
    rows = await conn.execute(
        select(points_lots.c.member_id, func.sum(points_lots.c.remaining))
        .where(any_of(points_lots.c.member_id, ids), points_lots.c.remaining > 0, points_lots.c.expires_at > as_of)
        .group_by(points_lots.c.member_id))
    return {row[0]: int(row[1]) for row in rows}


async def current_tiers(conn: AsyncConnection, member_ids: Iterable[str]) -> dict[str, str]:
    ids = list(member_ids)
    if not ids:
        return {}
    return {row.member_id: row.tier for row in await conn.execute(
        select(tiers.c.member_id, tiers.c.tier).where(any_of(tiers.c.member_id, ids)))}


async def save_tiers(conn: AsyncConnection, moves: list[TierMove]) -> list[Envelope[Any]]:
    """Each member's last move is their tier row; every move is a TierChanged event."""
    last = {move.member_id: move for move in moves}
    if last:
        statement = insert(tiers)
        await conn.execute(statement.on_conflict_do_update(
            index_elements=["member_id"], set_={name: statement.excluded[name] for name in ("tier", "since", "rolling_spend")}),
            [{"member_id": m.member_id, "tier": m.new, "since": m.at, "rolling_spend": m.rolling_spend}
             for m in last.values()])
    return [member_event(TierChanged(member_id=m.member_id, old_tier=m.old, new_tier=m.new, rolling_spend=m.rolling_spend,
                                     effective_at=m.at),
                         event_type="TierChanged", member_id=m.member_id, occurred_at=m.at, source=SERVICE_NAME,
                         identity=f"tier/{m.member_id}/{m.identity}/{m.new}")
            for m in moves]


async def erased_members(conn: AsyncConnection, member_ids: Iterable[str]) -> set[str]:
    ids = list(member_ids)
    if not ids:
        return set()
    rows = await conn.execute(select(members.c.member_id).where(any_of(members.c.member_id, ids),
                                                                members.c.erased_at.is_not(None)))
    return {row.member_id for row in rows}


async def member_record(conn: AsyncConnection, member_id: str, *, lock: bool = False) -> dict[str, Any] | None:
    query = select(members).where(members.c.member_id == member_id)
    row = (await conn.execute(query.with_for_update() if lock else query)).first()
    return None if row is None else dict(row._mapping)


async def find_member(conn: AsyncConnection, *, phone: str | None, email: str | None,
                      card_number: str | None) -> dict[str, Any] | None:
    query = select(members).where(members.c.erased_at.is_(None))
    if phone is not None:
        query = query.where(members.c.phone == phone)
    if email is not None:
        query = query.where(members.c.email == email)
    if card_number is not None:
        query = query.where(members.c.card_number == card_number)
    row = (await conn.execute(query.limit(1))).first()
    return None if row is None else dict(row._mapping)


async def current_consents(conn: AsyncConnection, member_id: str) -> dict[str, dict[str, Any]]:
    rows = await conn.execute(
        select(consents.c.channel, consents.c.granted, consents.c.given_at, consents.c.source)
        .where(consents.c.member_id == member_id)
        .order_by(consents.c.channel, consents.c.given_at.desc(), consents.c.id.desc())
        .distinct(consents.c.channel))
    return {row.channel: {"granted": row.granted, "at": row.given_at, "source": row.source} for row in rows}


async def is_known(conn: AsyncConnection, member_id: str) -> bool:
    in_members = (await conn.execute(select(members.c.member_id).where(members.c.member_id == member_id))).first()
    in_profiles = (await conn.execute(select(profiles.c.member_id).where(profiles.c.member_id == member_id))).first()
    return in_members is not None or in_profiles is not None


async def overdue_key_customers(conn: AsyncConnection, *, store_id: str, at: datetime, sigmas: float,
                                limit: int) -> list[dict[str, Any]]:
    """Candidates for a store's call list, highest value first: members who shop there and whose days
    since their last visit exceed their own mean interval + `sigmas` spreads (at least two intervals).
    The caller keeps those whose home or preferred store it is."""
    spread = func.sqrt(profiles.c.rhythm_m2 / func.greatest(profiles.c.rhythm_intervals - 1, 1))
    days_since = func.extract("epoch", at - profiles.c.last_purchase_at) / 86400
    threshold = profiles.c.rhythm_mean_days + sigmas * spread
    home = select(members.c.home_store).where(members.c.member_id == profiles.c.member_id).scalar_subquery()
    query = (select(profiles, days_since.label("days_since"), threshold.label("threshold"), home.label("home_store"))
             .where(profiles.c.rhythm_intervals >= 2, days_since > threshold,
                    profiles.c.store_visits.has_key(store_id))
             .order_by(profiles.c.monetary.desc(), profiles.c.member_id).limit(max(limit * 50, 5000)))
    return [dict(row._mapping) for row in await conn.execute(query)]


async def ledger(conn: AsyncConnection, member_id: str, *, limit: int) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(points_ledger.c.kind, points_ledger.c.points, points_ledger.c.cause, points_ledger.c.occurred_at)
        .where(points_ledger.c.member_id == member_id).order_by(points_ledger.c.id.desc()).limit(limit))
    return [dict(row._mapping) for row in rows]


async def catalog_entries(conn: AsyncConnection, skus: Iterable[str]) -> dict[str, tuple[str | None, str | None]]:
    wanted = list(skus)
    if not wanted:
        return {}
    rows = await conn.execute(select(products.c.sku, products.c.category, products.c.brand)
                              .where(any_of(products.c.sku, wanted)))
    return {row.sku: (row.category, row.brand) for row in rows}


async def apply_segment_changes(conn: AsyncConnection, changes: list[Envelope[MemberSegmentChanged]]) -> None:
    """The segmenter's latest word per member (its `current` set), for `GET /v1/members?segment=`.
    Changes of one member arrive in order (keyed by member); an erased member is not recorded again."""
    latest = {event.payload.member_id: event.payload for event in changes}
    erased = set((await conn.execute(select(members.c.member_id).where(
        any_of(members.c.member_id, list(latest)), members.c.erased_at.is_not(None)))).scalars())
    rows = [{"member_id": m, "value_tier": c.current.get("value_tier"), "persona": c.current.get("persona"),
             "cluster": c.current.get("cluster"), "as_of": c.as_of} for m, c in sorted(latest.items()) if m not in erased]
    if rows:
        statement = insert(member_segments)
        await conn.execute(statement.on_conflict_do_update(
            index_elements=["member_id"], set_={k: statement.excluded[k] for k in ("value_tier", "persona", "cluster",
                                                                                     "as_of")},
            where=member_segments.c.as_of <= statement.excluded.as_of), rows)


async def upsert_products(conn: AsyncConnection, listed: list[Envelope[Product]]) -> None:
    latest = {event.payload.sku: event.payload for event in listed}  # the last word per sku in the batch
    rows = [{"sku": p.sku, "category": " / ".join(filter(None, (p.department, p.category))) or None,
             "brand": p.brand, "department": p.department} for p in latest.values()]
    statement = insert(products)
    await conn.execute(statement.on_conflict_do_update(
        index_elements=["sku"], set_={"category": statement.excluded.category, "brand": statement.excluded.brand,
                                      "department": statement.excluded.department, "updated_at": func.now()}), rows)
