"""member-profile's tables and the unit of work that applies a batch of sales."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from crm_shared.consumer import applied_events_table
from crm_shared.events import Envelope, Sale
from sqlalchemy import (
    BigInteger,
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
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from member_profile.domain import Profile, Rhythm, apply_sale, rhythm_of

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

_COUNTERS = ("frequency", "returns", "items_bought", "lines_bought", "items_returned", "items_on_discount")
_MONEY = ("monetary", "gross_sales", "discount_total")


def profile_from_row(row: Any) -> Profile:
    m = row._mapping
    return Profile(
        member_id=m["member_id"], first_purchase_at=m["first_purchase_at"], last_purchase_at=m["last_purchase_at"],
        **{name: int(m[name]) for name in _COUNTERS}, **{name: Decimal(m[name]) for name in _MONEY},
        store_visits=m["store_visits"], hour_of_day=m["hour_of_day"], weekday=m["weekday"],
        rhythm=Rhythm(m["rhythm_last_visit_day"], m["rhythm_intervals"], m["rhythm_mean_days"], m["rhythm_m2"]),
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
    }


async def load_profiles(conn: AsyncConnection, member_ids: Iterable[str]) -> dict[str, Profile]:
    ids = list(member_ids)
    if not ids:
        return {}
    rows = await conn.execute(select(profiles).where(profiles.c.member_id.in_(ids)))
    return {row.member_id: profile_from_row(row) for row in rows}


async def visit_days(conn: AsyncConnection, member_id: str) -> list[date]:
    rows = await conn.execute(select(purchases.c.visit_day).where(purchases.c.member_id == member_id,
                                                                  purchases.c.kind == "sale"))
    return [row.visit_day for row in rows]


async def apply_sales(conn: AsyncConnection, events: list[Envelope[Sale]]) -> list[Profile]:
    """One unit of work for a batch of new sales: history rows, profiles, the event-time watermark."""
    if not events:
        return []
    latest = max(event.payload.occurred_at for event in events)
    await conn.execute(
        insert(watermark).values(id=1, as_of=latest)
        .on_conflict_do_update(index_elements=["id"], set_={"as_of": func.greatest(watermark.c.as_of, latest)}))
    members = [e for e in events if e.payload.member_id is not None]
    if not members:
        return []
    await conn.execute(insert(purchases).on_conflict_do_nothing(), [{
        "event_id": e.event_id, "member_id": e.payload.member_id, "store_id": e.payload.store_id,
        "sale_id": e.payload.sale_id, "kind": e.payload.kind, "occurred_at": e.payload.occurred_at,
        "visit_day": e.payload.occurred_at.date(),
        "total": e.payload.total, "item_count": sum(line.quantity for line in e.payload.lines),
        "lines": [{"sku": line.sku, "description": line.description, "quantity": line.quantity,
                   "unit_price": str(line.unit_price)} for line in e.payload.lines[:50]],
    } for e in members])
    current = await load_profiles(conn, {e.payload.member_id for e in members if e.payload.member_id})
    for event in members:
        member_id = event.payload.member_id
        assert member_id is not None
        current[member_id] = apply_sale(current.get(member_id) or Profile(member_id), event.payload)
    for member_id, profile in list(current.items()):
        if profile.rhythm_needs_rebuild:  # a visit arrived out of order: rebuild from the history
            current[member_id] = replace(profile, rhythm=rhythm_of(await visit_days(conn, member_id)),
                                         rhythm_needs_rebuild=False)
    rows = [profile_row(profile) for profile in current.values()]
    statement = insert(profiles)
    await conn.execute(statement.on_conflict_do_update(
        index_elements=["member_id"],
        set_={**{c.name: statement.excluded[c.name] for c in profiles.columns if c.name != "member_id"},
              "updated_at": func.now()}), rows)
    return list(current.values())


async def as_of(conn: AsyncConnection) -> datetime | None:
    return (await conn.execute(select(watermark.c.as_of).where(watermark.c.id == 1))).scalar()


async def history(conn: AsyncConnection, member_id: str, *, limit: int, before: datetime | None) -> list[dict[str, Any]]:
    query = (select(purchases.c.sale_id, purchases.c.store_id, purchases.c.kind, purchases.c.occurred_at,
                    purchases.c.total, purchases.c.item_count, purchases.c.lines)
             .where(purchases.c.member_id == member_id).order_by(purchases.c.occurred_at.desc()).limit(limit))
    if before is not None:
        query = query.where(purchases.c.occurred_at < before)
    return [dict(row._mapping) for row in await conn.execute(query)]


async def top_members(conn: AsyncConnection, *, min_monetary: Decimal | None, limit: int, offset: int) -> list[Profile]:
    query = select(profiles).order_by(profiles.c.monetary.desc(), profiles.c.member_id).limit(limit).offset(offset)
    if min_monetary is not None:
        query = query.where(profiles.c.monetary >= min_monetary)
    return [profile_from_row(row) for row in await conn.execute(query)]


async def ping(conn: AsyncConnection) -> None:
    await conn.execute(text("SELECT 1"))
