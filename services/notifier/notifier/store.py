"""notifier's tables and the queries its handlers need."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from crm_shared.consumer import applied_events_table
from crm_shared.db import any_of
from crm_shared.outbox import outbox_table
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    cast,
    func,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, insert
from sqlalchemy.ext.asyncio import AsyncConnection

metadata = MetaData()
applied_events = applied_events_table(metadata)
outbox = outbox_table(metadata)

campaigns = Table(
    "campaigns", metadata,
    Column("campaign_id", String(64), primary_key=True),
    Column("definition", JSONB, nullable=False),
    Column("status", String(16), nullable=False),
    Column("sent", BigInteger, nullable=False, server_default="0", doc="offers sent (not withheld), for the budget"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

offers = Table(
    "offers", metadata,
    Column("offer_id", String(64), primary_key=True),
    Column("campaign_id", String(64), nullable=False),
    Column("member_id", String(64), nullable=False),
    Column("trigger", String(32), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("products", ARRAY(Text), nullable=False),
    Column("store_id", String(64)),
    Column("text", Text, nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False, doc="event time of the trigger"),
    Column("valid_to", DateTime(timezone=True), nullable=False),
    Column("withheld", Boolean, nullable=False),
    Column("redeemed_at", DateTime(timezone=True)),
    Column("redeemed_revenue", Numeric),
    Index("ix_offers_member_valid", "member_id", "valid_to"),
    Index("ix_offers_campaign", "campaign_id"),
)

suppressions = Table(
    "suppressions", metadata,
    Column("campaign_id", String(64), primary_key=True),
    Column("reason", String(32), primary_key=True),
    Column("count", BigInteger, nullable=False),
)

members = Table(
    "members", metadata,
    Column("member_id", String(64), primary_key=True),
    Column("tier", String(16)),
    Column("preferred_store", String(64)),
    Column("segments", ARRAY(Text), nullable=False, server_default="{}", doc="current value tier, persona, cluster"),
    Column("first_seen_at", DateTime(timezone=True), nullable=False),
)

erased_members = Table(
    "erased_members", metadata,
    Column("member_id", String(64), primary_key=True),
    Column("erased_at", DateTime(timezone=True), nullable=False),
)

basket_rules = Table(
    "basket_rules", metadata,
    Column("scope", String(64), primary_key=True),
    Column("window_end", DateTime(timezone=True), nullable=False),
    Column("rules", JSONB, nullable=False),
)

rhythms = Table(
    "rhythms", metadata,
    Column("member_id", String(64), primary_key=True),
    Column("sku", String(64), primary_key=True),
    Column("purchases", BigInteger, nullable=False),
    Column("first_at", DateTime(timezone=True), nullable=False),
    Column("last_at", DateTime(timezone=True), nullable=False),
    Column("due_at", DateTime(timezone=True), doc="predicted next purchase; null until bought twice"),
    Column("interval_seconds", Float),
    Column("reminded_for", DateTime(timezone=True), doc="the due time a run-out reminder was made for"),
    Index("ix_rhythms_due_at", "due_at"),
)

low_stock = Table(
    "low_stock", metadata,
    Column("store_id", String(64), primary_key=True),
    Column("sku", String(64), primary_key=True),
    Column("as_of", DateTime(timezone=True), nullable=False),
    Column("days_of_cover", Numeric, nullable=False),
)


# --- campaigns --------------------------------------------------------------------------------

async def load_campaigns(conn: AsyncConnection) -> list[dict[str, Any]]:
    return [dict(row._mapping) for row in await conn.execute(select(campaigns).order_by(campaigns.c.campaign_id))]


async def count_sent(conn: AsyncConnection, sent: dict[str, int]) -> None:
    for campaign_id, n in sorted(sent.items()):
        await conn.execute(update(campaigns).where(campaigns.c.campaign_id == campaign_id)
                           .values(sent=campaigns.c.sent + n))


async def save_campaign(conn: AsyncConnection, campaign_id: str, definition: dict[str, Any], status: str) -> None:
    statement = insert(campaigns).values(campaign_id=campaign_id, definition=definition, status=status)
    await conn.execute(statement.on_conflict_do_update(
        index_elements=[campaigns.c.campaign_id],
        set_={"definition": statement.excluded.definition, "updated_at": func.now()}))


async def seed_campaign(conn: AsyncConnection, campaign_id: str, definition: dict[str, Any]) -> None:
    await conn.execute(insert(campaigns).values(campaign_id=campaign_id, definition=definition, status="running")
                       .on_conflict_do_nothing())


async def set_status(conn: AsyncConnection, campaign_id: str, status: str) -> bool:
    result = await conn.execute(update(campaigns).where(campaigns.c.campaign_id == campaign_id)
                                .values(status=status, updated_at=func.now()))
    return bool(result.rowcount)


# --- members ----------------------------------------------------------------------------------

async def load_members(conn: AsyncConnection, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    if not ids:
        return {}
    rows = await conn.execute(select(members).where(any_of(members.c.member_id, list(ids))))
    return {row.member_id: dict(row._mapping) for row in rows}


MEMBER_LOCKS = 0x4E4F  # advisory lock namespace: one member's offer decisions at a time


async def lock_members(conn: AsyncConnection, member_ids: Sequence[str]) -> None:
    """Offer decisions of one member take turns across the notifier's consumers (sales, segments,
    tiers, profiles run concurrently): each reads the member's recent sends before deciding, so the
    caps hold. Locks are taken in id order in one statement (no deadlock between batches)."""
    if member_ids:
        await conn.execute(text("SELECT pg_advisory_xact_lock(:ns, hashtext(m)) FROM unnest(CAST(:ids AS text[])) AS m "
                                "ORDER BY m"), {"ns": MEMBER_LOCKS, "ids": sorted(member_ids)})


async def erased_among(conn: AsyncConnection, ids: Sequence[str]) -> set[str]:
    if not ids:
        return set()
    rows = await conn.execute(select(erased_members.c.member_id).where(any_of(erased_members.c.member_id, list(ids))))
    return {row.member_id for row in rows}


async def upsert_members(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Profile facts: tier and preferred store; segments and first_seen_at stay as they are.
    An erased member's row is not made again."""
    erased = await erased_among(conn, [r["member_id"] for r in rows])
    rows = [r for r in rows if r["member_id"] not in erased]
    if rows:
        statement = insert(members)
        await conn.execute(statement.on_conflict_do_update(
            index_elements=[members.c.member_id],
            set_={"tier": statement.excluded.tier, "preferred_store": statement.excluded.preferred_store}), list(rows))


async def set_segments(conn: AsyncConnection, member_id: str, segments: list[str], at: datetime) -> None:
    if await erased_among(conn, [member_id]):
        return  # a late segment change must not bring an erased member back
    statement = insert(members).values(member_id=member_id, segments=segments, first_seen_at=at)
    await conn.execute(statement.on_conflict_do_update(index_elements=[members.c.member_id],
                                                       set_={"segments": statement.excluded.segments}))


async def set_tier(conn: AsyncConnection, member_id: str, tier: str, at: datetime) -> None:
    if await erased_among(conn, [member_id]):
        return
    statement = insert(members).values(member_id=member_id, tier=tier, first_seen_at=at)
    await conn.execute(statement.on_conflict_do_update(index_elements=[members.c.member_id],
                                                       set_={"tier": statement.excluded.tier}))


async def erase(conn: AsyncConnection, member_id: str, at: datetime, pseudonym: str) -> None:
    """Forget the person: no contact ever again; their offers stay only as counts under a pseudonym."""
    await conn.execute(members.delete().where(members.c.member_id == member_id))
    await conn.execute(rhythms.delete().where(rhythms.c.member_id == member_id))  # their per-product purchase habits
    await conn.execute(update(offers).where(offers.c.member_id == member_id).values(member_id=pseudonym, text=""))
    await conn.execute(insert(erased_members).values(member_id=member_id, erased_at=at).on_conflict_do_nothing())


async def audience(conn: AsyncConnection, *, segments: Sequence[str], tiers: Sequence[str], stores: Sequence[str],
                   sample: int) -> tuple[int, list[str]]:
    """Members a campaign's filters select, among those the notifier has seen (erased ones are gone)."""
    query = select(members.c.member_id)
    if segments:
        query = query.where(members.c.segments.overlap(cast(list(segments), ARRAY(Text))))
    if tiers:
        query = query.where(any_of(members.c.tier, list(tiers)))
    if stores:
        query = query.where(any_of(members.c.preferred_store, list(stores)))
    total = int((await conn.execute(select(func.count()).select_from(query.subquery()))).scalar() or 0)
    rows = await conn.execute(query.order_by(func.md5(members.c.member_id)).limit(sample))
    return total, [row[0] for row in rows]


# --- offers -----------------------------------------------------------------------------------

async def history(conn: AsyncConnection, member_ids: Sequence[str], since: datetime) -> list[dict[str, Any]]:
    """Each member's offers that could matter now: sent in the cap window, or still valid (dedupe)."""
    if not member_ids:
        return []
    rows = await conn.execute(
        select(offers.c.member_id, offers.c.campaign_id, offers.c.products, offers.c.issued_at, offers.c.valid_to,
               offers.c.withheld)
        .where(any_of(offers.c.member_id, list(member_ids)))
        .where((offers.c.issued_at >= since) | (offers.c.valid_to >= since)))
    return [dict(row._mapping) for row in rows]


async def open_offers(conn: AsyncConnection, member_ids: Sequence[str], earliest: datetime,
                      skus: Sequence[str]) -> list[dict[str, Any]]:
    """Unredeemed, unexpired offers of these members that these SKUs could redeem (or any purchase can)."""
    if not member_ids:
        return []
    rows = await conn.execute(
        select(offers.c.offer_id, offers.c.member_id, offers.c.products, offers.c.issued_at, offers.c.valid_to)
        .where(any_of(offers.c.member_id, list(member_ids)))
        .where(offers.c.redeemed_at.is_(None), offers.c.valid_to >= earliest)
        .where(offers.c.products.overlap(cast(sorted(set(skus)), ARRAY(Text))) | (func.cardinality(offers.c.products) == 0)))
    return [dict(row._mapping) for row in rows]


async def add_offers(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> set[str]:
    """Insert offers; returns the ids that were new (a recomputed decision inserts nothing)."""
    if not rows:
        return set()
    result = await conn.execute(insert(offers).on_conflict_do_nothing().returning(offers.c.offer_id), list(rows))
    return {row.offer_id for row in result}


async def mark_redeemed(conn: AsyncConnection, redeemed: Sequence[tuple[str, datetime, Any]]) -> None:
    for offer_id, at, revenue in redeemed:
        await conn.execute(update(offers).where(offers.c.offer_id == offer_id, offers.c.redeemed_at.is_(None))
                           .values(redeemed_at=at, redeemed_revenue=revenue))


async def count_suppressions(conn: AsyncConnection, counts: dict[tuple[str, str], int]) -> None:
    if counts:
        statement = insert(suppressions)
        await conn.execute(statement.on_conflict_do_update(
            index_elements=[suppressions.c.campaign_id, suppressions.c.reason],
            set_={"count": suppressions.c.count + statement.excluded["count"]}),
            [{"campaign_id": c, "reason": r, "count": n} for (c, r), n in sorted(counts.items())])


async def member_offers(conn: AsyncConnection, member_id: str, limit: int = 100) -> list[dict[str, Any]]:
    rows = await conn.execute(select(offers).where(offers.c.member_id == member_id)
                              .order_by(offers.c.issued_at.desc()).limit(limit))
    return [dict(row._mapping) for row in rows]


async def campaign_figures(conn: AsyncConnection, campaign_id: str) -> dict[str, Any]:
    """Per arm: members offered, members who redeemed, redeemed revenue; and suppressions by reason."""
    arm = (select(offers.c.withheld, func.count(func.distinct(offers.c.member_id)).label("members"),
                  func.count(func.distinct(offers.c.member_id)).filter(offers.c.redeemed_at.is_not(None)).label("converted"),
                  func.count().label("offers"),
                  func.count().filter(offers.c.redeemed_at.is_not(None)).label("redeemed"),
                  func.coalesce(func.sum(offers.c.redeemed_revenue), 0).label("revenue"))
           .where(offers.c.campaign_id == campaign_id).group_by(offers.c.withheld))
    arms = {bool(row.withheld): dict(row._mapping) for row in await conn.execute(arm)}
    reasons = await conn.execute(select(suppressions.c.reason, suppressions.c["count"])
                                 .where(suppressions.c.campaign_id == campaign_id))
    return {"arms": arms, "suppressed": {row.reason: int(row[1]) for row in reasons}}


# --- rules and stock --------------------------------------------------------------------------

async def save_rules(conn: AsyncConnection, scope: str, window_end: datetime, rules: list[dict[str, Any]]) -> bool:
    """Keep the latest rules per scope (by the window's event time); an older set arriving late is ignored."""
    statement = insert(basket_rules).values(scope=scope, window_end=window_end, rules=rules)
    result = await conn.execute(statement.on_conflict_do_update(
        index_elements=[basket_rules.c.scope], set_={"window_end": statement.excluded.window_end,
                                                     "rules": statement.excluded.rules},
        where=basket_rules.c.window_end <= statement.excluded.window_end))
    return bool(result.rowcount)


async def load_rules(conn: AsyncConnection) -> dict[str, list[dict[str, Any]]]:
    return {row.scope: list(row.rules) for row in await conn.execute(select(basket_rules))}


async def save_low_stock(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        statement = insert(low_stock)
        await conn.execute(statement.on_conflict_do_update(
            index_elements=[low_stock.c.store_id, low_stock.c.sku],
            set_={"as_of": statement.excluded.as_of, "days_of_cover": statement.excluded.days_of_cover},
            where=low_stock.c.as_of <= statement.excluded.as_of), list(rows))


async def low_stock_at(conn: AsyncConnection, stores: Sequence[str], since: datetime) -> dict[str, set[str]]:
    """SKUs reported low at each store since `since` (a report holds for a while in event time)."""
    if not stores:
        return {}
    rows = await conn.execute(select(low_stock.c.store_id, low_stock.c.sku)
                              .where(any_of(low_stock.c.store_id, list(stores)), low_stock.c.as_of >= since))
    out: dict[str, set[str]] = {}
    for row in rows:
        out.setdefault(row.store_id, set()).add(row.sku)
    return out


# --- purchase rhythms (run-out reminders) -------------------------------------------------------

async def load_rhythms(conn: AsyncConnection, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
    if not pairs:
        return {}
    rows = await conn.execute(select(rhythms).where(tuple_(rhythms.c.member_id, rhythms.c.sku).in_(list(pairs))))
    return {(row.member_id, row.sku): dict(row._mapping) for row in rows}


async def save_rhythms(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        statement = insert(rhythms)
        await conn.execute(statement.on_conflict_do_update(
            index_elements=[rhythms.c.member_id, rhythms.c.sku],
            set_={c: statement.excluded[c] for c in ("purchases", "first_at", "last_at", "due_at", "interval_seconds")}),
            list(rows))


async def due_rhythms(conn: AsyncConnection, clock: datetime, lead: timedelta, min_purchases: int,
                      limit: int = 5000) -> list[dict[str, Any]]:
    """Rhythms whose reminder window holds `clock` and that were not reminded for this due time yet."""
    rows = await conn.execute(
        select(rhythms).where(rhythms.c.due_at <= clock + lead, rhythms.c.purchases >= min_purchases,
                              rhythms.c.reminded_for.is_distinct_from(rhythms.c.due_at))
        .where(rhythms.c.due_at + func.make_interval(0, 0, 0, 0, 0, 0, rhythms.c.interval_seconds / 2) > clock)
        .order_by(rhythms.c.due_at).limit(limit))
    return [dict(row._mapping) for row in rows]


async def mark_reminded(conn: AsyncConnection, done: Sequence[tuple[str, str, datetime]]) -> None:
    for member_id, sku, due in done:
        await conn.execute(update(rhythms).where(rhythms.c.member_id == member_id, rhythms.c.sku == sku)
                           .values(reminded_for=due))
