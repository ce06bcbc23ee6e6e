"""notifier's tables and the queries its handlers need."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from crm_shared.consumer import applied_events_table
from crm_shared.db import any_of, insert_from_recordset, recordset, recordset_rows
from crm_shared.events import Envelope
from crm_shared.outbox import outbox_table
from crm_shared.serde import encode, encode_key
from sqlalchemy import (
    CHAR,
    BigInteger,
    Boolean,
    Column,
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
    cast,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID, insert
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
    Column("redeemed_by", String(64), doc="the sale id that redeemed it (a return of it undoes the redemption)"),
    Column("redeemed_by_code", Boolean, nullable=False, server_default="false"),
    Column("features", JSONB(none_as_null=True), doc="what the learned chooser saw when it chose this offer"),
    Column("learned", Boolean, nullable=False, server_default="false", doc="its outcome was fed to the chooser"),
    Index("ix_offers_member_valid", "member_id", "valid_to"),
    Index("ix_offers_campaign", "campaign_id"),
    Index("ix_offers_redeemed_by", "redeemed_by", postgresql_where=text("redeemed_by IS NOT NULL")),
    Index("ix_offers_to_learn", "valid_to", postgresql_where=text("features IS NOT NULL AND NOT learned")),
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
    Column("profile_seen", Boolean, nullable=False, server_default="false", doc="a profile arrived (welcome once)"),
    Column("profile_as_of", DateTime(timezone=True)),
    Column("tier_as_of", DateTime(timezone=True)),
    Column("segments_as_of", DateTime(timezone=True)),
    Column("categories", ARRAY(Text), nullable=False, server_default="{}", doc="top categories from the profile"),
    Column("brands", ARRAY(Text), nullable=False, server_default="{}", doc="top brands from the profile"),
    Index("ix_members_categories", "categories", postgresql_using="gin"),
    Index("ix_members_brands", "brands", postgresql_using="gin"),
)

contacts = Table(
    "contacts", metadata,
    Column("member_id", String(64), primary_key=True),
    Column("enrolled", Boolean, nullable=False),
    Column("consents", JSONB, nullable=False, doc="channel -> granted, from member.consents.v1"),
    Column("home_store", String(64)),
    Column("birthday", CHAR(5), doc="MM-DD"),
    Column("as_of", DateTime(timezone=True), nullable=False),
    Index("ix_contacts_birthday", "birthday", postgresql_where=text("enrolled")),
)

products = Table(
    "products", metadata,
    Column("sku", String(64), primary_key=True),
    Column("category", Text),
    Column("brand", Text),
    Column("launched_at", DateTime(timezone=True)),
)

scheduled = Table(
    "scheduled", metadata,
    Column("source_id", String(200), primary_key=True, doc="what it follows up, e.g. after-sale/<sale event>/<sku>"),
    Column("trigger", String(32), nullable=False),
    Column("campaign_id", String(64), doc="after-sale: the campaign whose delay and categories scheduled it"),
    Column("member_id", String(64)),
    Column("sku", String(64)),
    Column("store_id", String(64)),
    Column("due_at", DateTime(timezone=True), nullable=False),
    Column("detail", Text, nullable=False),
    Column("fired_at", DateTime(timezone=True)),
    Index("ix_scheduled_due", "due_at", postgresql_where=text("fired_at IS NULL")),
)

clocks = Table(
    "clocks", metadata,
    Column("name", String(32), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
)

# Offers deferred out of quiet hours, held until their `valid_from` by the wall clock, then moved to the
# outbox (`release_deferred`): a tool reading `marketing.offers.v1` never gets a 23:00 push before 08:00.
deferred_offers = Table(
    "deferred_offers", metadata,
    Column("offer_id", String(64), primary_key=True),
    Column("member_id", String(64), nullable=False, doc="for erasure: the event names the member"),
    Column("not_before", DateTime(timezone=True), nullable=False, doc="the offer's valid_from"),
    Column("event_id", UUID(as_uuid=True), nullable=False),
    Column("key", LargeBinary, nullable=False),
    Column("value", LargeBinary, nullable=False),
    Index("ix_deferred_offers_due", "not_before"),
)

webhook_deliveries = Table(
    "webhook_deliveries", metadata,
    Column("offer_id", String(64), primary_key=True),
    Column("body", Text, nullable=False),
    Column("status", String(16), nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_error", Text),
    Column("delivered_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_webhook_pending", "next_attempt_at", postgresql_where=text("status = 'pending'")),
)

model_state = Table(
    "model_state", metadata,
    Column("name", String(64), primary_key=True),
    Column("state", LargeBinary, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
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

member_purchases = Table(
    "member_purchases", metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=True, doc="the order the sales topic gave"),
    Column("member_id", String(64), doc="null: an anonymous sale kept for the offer codes it scanned"),
    Column("sale_id", String(64), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("original_sale_id", String(64)),
    Column("lines", JSONB, nullable=False, doc="[[sku, net, offer code or null], ...]"),
    Column("total", Numeric, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now(), doc="wall clock"),
    Column("codes", ARRAY(Text), nullable=False, server_default="{}", doc="offer codes its lines scanned"),
    Index("ix_member_purchases_member", "member_id", "seq"),
    Index("ix_member_purchases_at", "at"),
    Index("ix_member_purchases_codes", "codes", postgresql_using="gin", postgresql_where=text("codes <> '{}'")),
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

stock_signals = Table(
    "stock_signals", metadata,
    Column("store_id", String(64), primary_key=True),
    Column("sku", String(64), primary_key=True),
    Column("at", DateTime(timezone=True), primary_key=True, doc="event time of the report or the receipt"),
    Column("kind", String(8), primary_key=True, doc="low (replenishment's report) | received (goods arrived)"),
    Column("days_of_cover", Numeric),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now(), doc="wall clock"),
)


# --- campaigns --------------------------------------------------------------------------------

async def load_campaigns(conn: AsyncConnection, ids: Sequence[str] | None = None, *,
                         lock: bool = False) -> list[dict[str, Any]]:
    query = select(campaigns).order_by(campaigns.c.campaign_id)
    if ids is not None:
        query = query.where(any_of(campaigns.c.campaign_id, list(ids)))
    if lock:
        query = query.with_for_update()
    return [dict(row._mapping) for row in await conn.execute(query)]


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


def _not_erased(rows: Sequence[dict[str, Any]], erased: set[str]) -> list[dict[str, Any]]:
    return [r for r in rows if r["member_id"] not in erased]


def _latest(rows: Sequence[dict[str, Any]], stamp: str) -> list[dict[str, Any]]:
    """One row per member, the latest by `stamp` (one statement may not touch a row twice)."""
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:
        held = latest.get(row["member_id"])
        if held is None or held[stamp] <= row[stamp]:
            latest[row["member_id"]] = row
    return [latest[m] for m in sorted(latest)]


async def upsert_profiles(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Profile facts (tier, preferred store, top categories and brands), each only if newer in event
    time than what is held; `profile_seen` marks that the welcome decision was taken. An erased
    member's row is not made again."""
    rows = _not_erased(_latest(rows, "profile_as_of"), await erased_among(conn, [r["member_id"] for r in rows]))
    if not rows:
        return
    statement = insert(members)
    newer = members.c.profile_as_of.is_(None) | (members.c.profile_as_of <= statement.excluded.profile_as_of)
    tier_newer = members.c.tier_as_of.is_(None) | (members.c.tier_as_of <= statement.excluded.profile_as_of)
    await conn.execute(statement.on_conflict_do_update(
        index_elements=[members.c.member_id],
        set_={"preferred_store": case((newer, statement.excluded.preferred_store), else_=members.c.preferred_store),
              "categories": case((newer, statement.excluded.categories), else_=members.c.categories),
              "brands": case((newer, statement.excluded.brands), else_=members.c.brands),
              "tier": case((newer & tier_newer, statement.excluded.tier), else_=members.c.tier),
              "tier_as_of": case((newer & tier_newer, statement.excluded.profile_as_of), else_=members.c.tier_as_of),
              "profile_as_of": func.greatest(members.c.profile_as_of, statement.excluded.profile_as_of),
              "profile_seen": True}),
        [{**r, "profile_seen": True, "tier_as_of": r["profile_as_of"]} for r in rows])


async def set_segments(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Each member's current segments (rows: member_id, segments, segments_as_of), unless older than held."""
    await _set_if_newer(conn, rows, "segments", "segments_as_of")


async def set_tiers(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Each member's tier (rows: member_id, tier, tier_as_of), unless older than held."""
    await _set_if_newer(conn, rows, "tier", "tier_as_of")


async def _set_if_newer(conn: AsyncConnection, rows: Sequence[dict[str, Any]], column: str, stamp: str) -> None:
    """One member fact with its own event-time stamp: a late older event never overwrites a newer one,
    and an erased member's row is not made again."""
    rows = _not_erased(_latest(rows, stamp), await erased_among(conn, [r["member_id"] for r in rows]))
    if rows:
        statement = insert(members)
        await conn.execute(statement.on_conflict_do_update(
            index_elements=[members.c.member_id],
            set_={column: statement.excluded[column], stamp: statement.excluded[stamp]},
            where=members.c[stamp].is_(None) | (members.c[stamp] <= statement.excluded[stamp])),
            [{**r, "first_seen_at": r[stamp]} for r in rows])


# --- contactability (member.consents.v1) ---------------------------------------------------------

async def upsert_contacts(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    rows = _not_erased(_latest(rows, "as_of"), await erased_among(conn, [r["member_id"] for r in rows]))
    if rows:
        statement = insert(contacts)
        await conn.execute(statement.on_conflict_do_update(
            index_elements=[contacts.c.member_id],
            set_={c: statement.excluded[c] for c in ("enrolled", "consents", "home_store", "birthday", "as_of")},
            where=contacts.c.as_of <= statement.excluded.as_of), rows)


async def consents_of(conn: AsyncConnection, ids: Sequence[str]) -> dict[str, dict[str, bool]]:
    """Current consent per channel of enrolled members; absent = never enrolled (no consent)."""
    if not ids:
        return {}
    rows = await conn.execute(select(contacts.c.member_id, contacts.c.consents)
                              .where(any_of(contacts.c.member_id, list(ids)), contacts.c.enrolled))
    return {row.member_id: {k: bool(v) for k, v in row.consents.items()} for row in rows}


async def birthdays(conn: AsyncConnection, keys: Sequence[str], limit: int) -> list[dict[str, Any]]:
    rows = await conn.execute(select(contacts.c.member_id, contacts.c.home_store, contacts.c.birthday)
                              .where(any_of(contacts.c.birthday, sorted(keys)), contacts.c.enrolled)
                              .order_by(contacts.c.member_id).limit(limit))
    return [dict(row._mapping) for row in rows]


# --- event-time clocks and scheduled triggers ----------------------------------------------------

async def clock(conn: AsyncConnection, name: str) -> datetime | None:
    row = (await conn.execute(select(clocks.c.at).where(clocks.c.name == name))).first()
    return None if row is None else row.at


async def advance_clock(conn: AsyncConnection, name: str, at: datetime) -> datetime | None:
    """Move a named event-time clock forward (never back); returns where it was before."""
    row = (await conn.execute(select(clocks.c.at).where(clocks.c.name == name).with_for_update())).first()
    previous = row.at if row else None
    if previous is None or at > previous:
        statement = insert(clocks).values(name=name, at=at)
        await conn.execute(statement.on_conflict_do_update(index_elements=[clocks.c.name], set_={"at": at}))
    return previous


SCHEDULE_COLUMNS = ("source_id", "trigger", "campaign_id", "member_id", "sku", "store_id", "due_at", "detail")
# One statement whatever the number of follow-ups (an executemany ran the INSERT once per row; a
# replay's batch schedules thousands of after-sale reminders).
_SCHEDULE_SQL = insert_from_recordset(scheduled, SCHEDULE_COLUMNS)


async def schedule(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Follow-ups not scheduled before (by `source_id`); a column a row leaves out is NULL."""
    if rows:
        await conn.execute(text(_SCHEDULE_SQL), {"rows": recordset_rows(
            ({c: row.get(c) for c in SCHEDULE_COLUMNS} for row in rows), SCHEDULE_COLUMNS)})


async def due_scheduled(conn: AsyncConnection, clock: datetime, limit: int = 5000) -> list[dict[str, Any]]:
    """Follow-ups whose time has come in event time, not fired yet; locked so one consumer fires each."""
    rows = await conn.execute(select(scheduled).where(scheduled.c.fired_at.is_(None), scheduled.c.due_at <= clock)
                              .order_by(scheduled.c.due_at, scheduled.c.source_id).limit(limit)
                              .with_for_update(skip_locked=True))
    return [dict(row._mapping) for row in rows]


async def mark_fired(conn: AsyncConnection, source_ids: Sequence[str], at: datetime) -> None:
    if source_ids:
        await conn.execute(update(scheduled).where(any_of(scheduled.c.source_id, list(source_ids))).values(fired_at=at))


# --- products (new arrivals, after-sale care) ----------------------------------------------------

async def upsert_products(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    latest = {r["sku"]: r for r in rows}
    if latest:
        statement = insert(products)
        await conn.execute(statement.on_conflict_do_update(
            index_elements=[products.c.sku],
            set_={c: statement.excluded[c] for c in ("category", "brand", "launched_at")}),
            [latest[k] for k in sorted(latest)])


async def categories_of(conn: AsyncConnection, skus: Sequence[str]) -> dict[str, dict[str, Any]]:
    if not skus:
        return {}
    rows = await conn.execute(select(products).where(any_of(products.c.sku, sorted(set(skus)))))
    return {row.sku: dict(row._mapping) for row in rows}


async def members_with_habit(conn: AsyncConnection, *, category: str | None, brand: str | None,
                             limit: int) -> list[str]:
    """Members whose profile's top categories or brands include the product's (erased ones are gone)."""
    condition = None
    if category:
        condition = members.c.categories.any(category)  # type: ignore[arg-type]
    if brand:
        by_brand = members.c.brands.any(brand)  # type: ignore[arg-type]
        condition = by_brand if condition is None else condition | by_brand
    if condition is None:
        return []
    rows = await conn.execute(select(members.c.member_id).where(condition).order_by(members.c.member_id).limit(limit))
    return [row.member_id for row in rows]


async def erase(conn: AsyncConnection, member_id: str, at: datetime, pseudonym: str) -> None:
    """Forget the person: no contact ever again; their offers stay only as counts under a pseudonym."""
    await conn.execute(members.delete().where(members.c.member_id == member_id))
    await conn.execute(rhythms.delete().where(rhythms.c.member_id == member_id))  # their per-product purchase habits
    await conn.execute(member_purchases.delete().where(member_purchases.c.member_id == member_id))  # what they bought
    await conn.execute(contacts.delete().where(contacts.c.member_id == member_id))  # consents and birthday
    await conn.execute(scheduled.delete().where(scheduled.c.member_id == member_id, scheduled.c.fired_at.is_(None)))
    await conn.execute(deferred_offers.delete().where(deferred_offers.c.member_id == member_id))  # never sent now
    await conn.execute(webhook_deliveries.delete().where(webhook_deliveries.c.offer_id.in_(
        select(offers.c.offer_id).where(offers.c.member_id == member_id))))  # bodies name the member
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


REDEMPTION_COLUMNS = ("offer_id", "member_id", "products", "issued_at", "valid_to", "features", "learned",
                      "redeemed_at", "redeemed_revenue", "redeemed_by", "redeemed_by_code")


async def open_offers(conn: AsyncConnection, member_ids: Sequence[str], earliest: datetime,
                      skus: Sequence[str]) -> list[dict[str, Any]]:
    """Unredeemed, unexpired offers of these members that these SKUs could redeem (or any purchase can)."""
    if not member_ids:
        return []
    rows = await conn.execute(
        select(*(offers.c[c] for c in REDEMPTION_COLUMNS))
        .where(any_of(offers.c.member_id, list(member_ids)))
        .where(offers.c.redeemed_at.is_(None), offers.c.valid_to >= earliest)
        .where(offers.c.products.overlap(cast(sorted(set(skus)), ARRAY(Text))) | (func.cardinality(offers.c.products) == 0)))
    return [dict(row._mapping) for row in rows]


OFFER_COLUMNS = ("offer_id", "campaign_id", "member_id", "trigger", "channel", "products", "store_id", "text",
                 "issued_at", "valid_to", "withheld", "features")
_ADD_OFFERS_SQL = insert_from_recordset(offers, OFFER_COLUMNS, tail="ON CONFLICT DO NOTHING RETURNING offer_id")


async def add_offers(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> set[str]:
    """Insert offers; returns the ids that were new (a recomputed decision inserts nothing). One
    statement whatever the number of rows (`insert_from_recordset` says why that matters)."""
    if not rows:
        return set()
    result = await conn.execute(text(_ADD_OFFERS_SQL), {"rows": recordset_rows(rows, OFFER_COLUMNS)})
    return {row.offer_id for row in result}


async def offers_by_code(conn: AsyncConnection, codes: Sequence[str]) -> list[dict[str, Any]]:
    """Unredeemed offers whose id a till scanned as an offer code."""
    if not codes:
        return []
    rows = await conn.execute(
        select(*(offers.c[c] for c in REDEMPTION_COLUMNS))
        .where(any_of(offers.c.offer_id, sorted(set(codes))), offers.c.redeemed_at.is_(None)))
    return [dict(row._mapping) for row in rows]


async def offers_redeemed_by(conn: AsyncConnection, member_ids: Sequence[str],
                             sale_ids: Sequence[str]) -> list[dict[str, Any]]:
    """These members' offers that these sales redeemed (a return of one of them may undo it)."""
    if not member_ids or not sale_ids:
        return []
    rows = await conn.execute(select(*(offers.c[c] for c in REDEMPTION_COLUMNS))
                              .where(any_of(offers.c.redeemed_by, sorted(set(sale_ids))),
                                     any_of(offers.c.member_id, sorted(set(member_ids)))))
    return [dict(row._mapping) for row in rows]


PURCHASE_COLUMNS = ("member_id", "sale_id", "at", "kind", "original_sale_id", "lines", "total", "codes")
_RECORD_PURCHASES_SQL = insert_from_recordset(member_purchases, PURCHASE_COLUMNS, tail="")


async def record_purchases(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Members' sales and returns, and any sale scanning an offer code, in topic order (`seq`), for offers
    decided after them (`purchases_since`)."""
    if rows:
        await conn.execute(text(_RECORD_PURCHASES_SQL), {"rows": recordset_rows(rows, PURCHASE_COLUMNS)})


async def purchases_since(conn: AsyncConnection, member_ids: Sequence[str], codes: Sequence[str],
                          after: datetime) -> list[dict[str, Any]]:
    """These members' sales and returns, and any sale scanning one of `codes`, later than `after` in
    event time, in the order they were applied."""
    if not member_ids and not codes:
        return []
    scanned = member_purchases.c.codes.overlap(cast(sorted(set(codes)), ARRAY(Text)))
    rows = await conn.execute(select(member_purchases).where(
        any_of(member_purchases.c.member_id, sorted(set(member_ids))) | scanned, member_purchases.c.at > after)
        .order_by(member_purchases.c.seq))
    return [dict(row._mapping) for row in rows]


async def forget_purchases(conn: AsyncConnection, before: datetime, grace: timedelta) -> None:
    """Sales older than `before` in event time AND recorded more than `grace` ago (wall clock): an offer
    read late on another topic still finds them while that topic is behind by less than either. Run
    once per event day (the `at` index reads only what is past `before`)."""
    await conn.execute(member_purchases.delete().where(member_purchases.c.recorded_at < func.now() - grace,
                                                       member_purchases.c.at < before))


async def save_redemptions(conn: AsyncConnection, changed: Sequence[dict[str, Any]]) -> set[str]:
    """rows: offer_id, `held_by` (its `redeemed_by` when loaded) and the four redemption columns (all
    None: the redemption was undone). A row is written only if the offer is still as loaded; returns
    the offer ids written."""
    if not changed:
        return set()
    if len({row["offer_id"] for row in changed}) != len(changed):
        raise ValueError("an offer's redemption changed twice in one save")
    result = await conn.execute(text(_SAVE_REDEMPTIONS_SQL), {"changed": recordset_rows(changed, _REDEMPTION_TYPES)})
    return {row.offer_id for row in result}


# One statement for a batch's redemptions (a statement per offer was 2,233 round trips over the year).
_REDEMPTION_TYPES = {"offer_id": "text", "held_by": "text", "redeemed_at": "timestamptz", "redeemed_revenue": "numeric",
                     "redeemed_by": "text", "redeemed_by_code": "boolean"}
_SAVE_REDEMPTIONS_SQL = (
    "UPDATE offers SET redeemed_at = changed.redeemed_at, redeemed_revenue = changed.redeemed_revenue, "
    "redeemed_by = changed.redeemed_by, redeemed_by_code = changed.redeemed_by_code "
    f"FROM {recordset('changed', _REDEMPTION_TYPES)} "
    "WHERE offers.offer_id = changed.offer_id AND offers.redeemed_by IS NOT DISTINCT FROM changed.held_by "
    "RETURNING offers.offer_id")


# --- offers deferred out of quiet hours ---------------------------------------------------------

async def defer_offers(conn: AsyncConnection, events: Sequence[Envelope[Any]]) -> None:
    """Hold offer events until their `valid_from` (one statement; released by `release_deferred`)."""
    if events:
        await conn.execute(text(
            "INSERT INTO deferred_offers (offer_id, member_id, not_before, event_id, key, value) "
            "SELECT * FROM unnest(CAST(:offer_ids AS text[]), CAST(:member_ids AS text[]), "
            "CAST(:not_before AS timestamptz[]), CAST(:event_ids AS uuid[]), CAST(:keys AS bytea[]), "
            "CAST(:values AS bytea[])) ON CONFLICT DO NOTHING"),
            {"offer_ids": [e.payload.offer_id for e in events], "member_ids": [e.payload.member_id for e in events],
             "not_before": [e.payload.valid_from for e in events], "event_ids": [e.event_id for e in events],
             "keys": [encode_key(e.key) for e in events], "values": [encode(e) for e in events]})


async def release_deferred(conn: AsyncConnection, topic: str, limit: int) -> int:
    """Move the deferred offers whose time has come (wall clock) to the outbox, earliest first; replicas
    skip each other's rows. Returns how many moved."""
    result = await conn.execute(text(
        "WITH due AS (DELETE FROM deferred_offers WHERE offer_id IN ("
        "  SELECT offer_id FROM deferred_offers WHERE not_before <= now() ORDER BY not_before, offer_id "
        "  LIMIT :limit FOR UPDATE SKIP LOCKED) RETURNING offer_id, not_before, event_id, key, value) "
        "INSERT INTO outbox (event_id, topic, key, value) "
        "SELECT event_id, :topic, key, value FROM due ORDER BY not_before, offer_id"), {"topic": topic, "limit": limit})
    return int(result.rowcount or 0)


async def deferred_count(conn: AsyncConnection) -> int:
    return int(await conn.scalar(select(func.count()).select_from(deferred_offers)) or 0)


# --- webhook deliveries --------------------------------------------------------------------------

_WEBHOOK_COLUMNS = ("offer_id", "body", "next_attempt_at")
_ENQUEUE_WEBHOOKS_SQL = insert_from_recordset(webhook_deliveries, _WEBHOOK_COLUMNS)


async def enqueue_webhooks(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """One delivery per offer (`offer_id`, `body`, `next_attempt_at`: its first post not before then), in
    one statement."""
    if rows:
        await conn.execute(text(_ENQUEUE_WEBHOOKS_SQL), {"rows": recordset_rows(rows, _WEBHOOK_COLUMNS)})


async def claim_webhooks(conn: AsyncConnection, limit: int) -> list[dict[str, Any]]:
    """Pending deliveries that are due, locked for this transaction (another replica skips them)."""
    rows = await conn.execute(select(webhook_deliveries)
                              .where(webhook_deliveries.c.status == "pending",
                                     webhook_deliveries.c.next_attempt_at <= func.now())
                              .order_by(webhook_deliveries.c.next_attempt_at).limit(limit)
                              .with_for_update(skip_locked=True))
    return [dict(row._mapping) for row in rows]


async def record_attempt(conn: AsyncConnection, offer_id: str, *, status: str, attempts: int,
                         retry_in_seconds: float | None, error: str | None) -> None:
    values: dict[str, Any] = {"status": status, "attempts": attempts, "last_error": error}
    if status == "delivered":
        values["delivered_at"] = func.now()
    if retry_in_seconds is not None:
        values["next_attempt_at"] = func.now() + func.make_interval(0, 0, 0, 0, 0, 0, retry_in_seconds)
    await conn.execute(update(webhook_deliveries).where(webhook_deliveries.c.offer_id == offer_id).values(**values))


async def webhook_figures(conn: AsyncConnection) -> dict[str, int]:
    rows = await conn.execute(select(webhook_deliveries.c.status, func.count()).group_by(webhook_deliveries.c.status))
    return {row[0]: int(row[1]) for row in rows}


async def expired_unlearned(conn: AsyncConnection, clock: datetime, limit: int = 2000) -> list[dict[str, Any]]:
    """Chosen offers whose window closed unredeemed and whose outcome the chooser has not learned yet."""
    rows = await conn.execute(select(offers.c.offer_id, offers.c.products, offers.c.features)
                              .where(offers.c.features.is_not(None), offers.c.learned.is_(False),
                                     offers.c.redeemed_at.is_(None), offers.c.valid_to < clock)
                              .order_by(offers.c.valid_to).limit(limit).with_for_update(skip_locked=True))
    return [dict(row._mapping) for row in rows]


async def mark_learned(conn: AsyncConnection, offer_ids: Sequence[str]) -> None:
    if offer_ids:
        await conn.execute(update(offers).where(any_of(offers.c.offer_id, list(offer_ids))).values(learned=True))


# --- the chooser's model ------------------------------------------------------------------------

async def load_model(conn: AsyncConnection, name: str) -> bytes | None:
    row = (await conn.execute(select(model_state.c.state).where(model_state.c.name == name))).first()
    return None if row is None else bytes(row.state)


async def save_model(conn: AsyncConnection, name: str, state: bytes) -> None:
    statement = insert(model_state).values(name=name, state=state)
    await conn.execute(statement.on_conflict_do_update(index_elements=[model_state.c.name],
                                                       set_={"state": state, "updated_at": func.now()}))


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
    """Per arm: members offered, members who redeemed, redeemed revenue; suppressions by reason; and the
    offers held until quiet hours end (decided, not yet published)."""
    arm = (select(offers.c.withheld, func.count(func.distinct(offers.c.member_id)).label("members"),
                  func.count(func.distinct(offers.c.member_id)).filter(offers.c.redeemed_at.is_not(None)).label("converted"),
                  func.count().label("offers"),
                  func.count().filter(offers.c.redeemed_at.is_not(None)).label("redeemed"),
                  func.coalesce(func.sum(offers.c.redeemed_revenue), 0).label("revenue"))
           .where(offers.c.campaign_id == campaign_id).group_by(offers.c.withheld))
    arms = {bool(row.withheld): dict(row._mapping) for row in await conn.execute(arm)}
    reasons = await conn.execute(select(suppressions.c.reason, suppressions.c["count"])
                                 .where(suppressions.c.campaign_id == campaign_id))
    waiting = await conn.scalar(select(func.count()).select_from(
        deferred_offers.join(offers, offers.c.offer_id == deferred_offers.c.offer_id))
        .where(offers.c.campaign_id == campaign_id))
    return {"arms": arms, "suppressed": {row.reason: int(row[1]) for row in reasons}, "waiting": int(waiting or 0)}


# --- rules and stock --------------------------------------------------------------------------

async def save_rules(conn: AsyncConnection, scope: str, window_end: datetime, rules: list[dict[str, Any]]) -> bool:
    """Keep the latest rules per scope (by the window's event time); an older set arriving late is ignored."""
    statement = insert(basket_rules).values(scope=scope, window_end=window_end, rules=rules)
    result = await conn.execute(statement.on_conflict_do_update(
        index_elements=[basket_rules.c.scope], set_={"window_end": statement.excluded.window_end,
                                                     "rules": statement.excluded.rules},
        where=basket_rules.c.window_end <= statement.excluded.window_end))
    return bool(result.rowcount)


async def rule_windows(conn: AsyncConnection) -> dict[str, datetime]:
    return {row.scope: row.window_end for row in await conn.execute(select(basket_rules.c.scope,
                                                                          basket_rules.c.window_end))}


async def load_rules(conn: AsyncConnection) -> dict[str, list[dict[str, Any]]]:
    return {row.scope: list(row.rules) for row in await conn.execute(select(basket_rules))}


STOCK_SIGNAL_COLUMNS = ("store_id", "sku", "at", "kind", "days_of_cover")
_RECORD_STOCK_SIGNALS_SQL = insert_from_recordset(stock_signals, STOCK_SIGNAL_COLUMNS)


async def record_stock_signals(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Low-stock reports and goods receipts per store and SKU, at their event time (a repeat is a no-op)."""
    if rows:
        await conn.execute(text(_RECORD_STOCK_SIGNALS_SQL), {"rows": recordset_rows(
            sorted(rows, key=lambda r: (r["store_id"], r["sku"], r["at"], r["kind"])), STOCK_SIGNAL_COLUMNS)})


_STOCK_SIGNALS_SQL = f"""
SELECT s.store_id, s.sku, s.at, s.kind
FROM {recordset("wanted", {"store_id": "text", "sku": "text", "since": "timestamptz", "until": "timestamptz"})}
JOIN stock_signals s ON s.store_id = wanted.store_id AND s.sku = wanted.sku AND s.at <= wanted.until
 AND s.at >= coalesce((SELECT max(p.at) FROM stock_signals p WHERE p.store_id = wanted.store_id
                        AND p.sku = wanted.sku AND p.at <= wanted.since), '-infinity')
"""


async def stock_signals_for(conn: AsyncConnection, wanted: dict[tuple[str, str], tuple[datetime, datetime]]
                            ) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """For each (store, sku) and event-time span (since, until): the signals that decide whether it was
    held low at any time of the span (the latest one up to `since`, and every one after it up to `until`)."""
    if not wanted:
        return {}
    rows = await conn.execute(text(_STOCK_SIGNALS_SQL), {"wanted": recordset_rows(
        [{"store_id": k[0], "sku": k[1], "since": v[0], "until": v[1]} for k, v in sorted(wanted.items())],
        ("store_id", "sku", "since", "until"))})
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault((row.store_id, row.sku), []).append(dict(row._mapping))
    return out


async def forget_stock_signals(conn: AsyncConnection, before: datetime, grace: timedelta) -> None:
    """Signals older than `before` (event time) and recorded more than `grace` ago that a later signal,
    itself before `before`, supersedes: what was held at any time since `before` stays decidable."""
    later = stock_signals.alias("later")
    await conn.execute(stock_signals.delete().where(
        stock_signals.c.at < before, stock_signals.c.recorded_at < func.now() - grace,
        select(later.c.at).where(later.c.store_id == stock_signals.c.store_id, later.c.sku == stock_signals.c.sku,
                                 later.c.at > stock_signals.c.at, later.c.at < before).exists()))


# --- purchase rhythms (run-out reminders) -------------------------------------------------------

async def load_rhythms(conn: AsyncConnection, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
    if not pairs:
        return {}
    # Two array parameters, one statement text: a `(member_id, sku) IN (...)` list is another prepared
    # statement (and plan, kept by PostgreSQL) for every number of pairs.
    rows = await conn.execute(text(
        "SELECT r.* FROM rhythms r JOIN unnest(CAST(:members AS text[]), CAST(:skus AS text[])) AS k(member_id, sku) "
        "ON r.member_id = k.member_id AND r.sku = k.sku"),
        {"members": [m for m, _ in pairs], "skus": [k for _, k in pairs]})
    return {(row.member_id, row.sku): dict(row._mapping) for row in rows}


async def save_rhythms(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        statement = insert(rhythms)
        await conn.execute(statement.on_conflict_do_update(
            index_elements=[rhythms.c.member_id, rhythms.c.sku],
            set_={c: statement.excluded[c] for c in ("purchases", "first_at", "last_at", "due_at", "interval_seconds")}),
            list(rows))


async def due_rhythms(conn: AsyncConnection, since: datetime, clock: datetime, lead: timedelta, min_purchases: int,
                      limit: int = 5000) -> list[dict[str, Any]]:
    """Rhythms whose reminder window the clock may enter between `since` and `clock` (it opens `lead`
    before the due time, by `clock`, and closes half an interval after it, after `since`), and that
    were not reminded for this due time yet."""
    rows = await conn.execute(
        select(rhythms).where(rhythms.c.due_at <= clock + lead, rhythms.c.purchases >= min_purchases,
                              rhythms.c.reminded_for.is_distinct_from(rhythms.c.due_at))
        .where(rhythms.c.due_at + func.make_interval(0, 0, 0, 0, 0, 0, rhythms.c.interval_seconds / 2) > since)
        .order_by(rhythms.c.due_at).limit(limit))
    return [dict(row._mapping) for row in rows]


async def mark_reminded(conn: AsyncConnection, done: Sequence[tuple[str, str, datetime]]) -> None:
    for member_id, sku, due in done:
        await conn.execute(update(rhythms).where(rhythms.c.member_id == member_id, rhythms.c.sku == sku)
                           .values(reminded_for=due))
