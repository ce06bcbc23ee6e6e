"""One function per command, query or event: load, decide with the domain, save, emit."""

from __future__ import annotations

import contextlib
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from crm_shared.auth import Principal
from crm_shared.events import (
    Envelope,
    MemberContactability,
    MemberErased,
    MemberProfileUpdated,
    Sale,
    contactability_event,
    member_event,
)
from crm_shared.outbox import add_events
from crm_shared.topics import MEMBER_CONSENTS, MEMBER_ERASED, MEMBER_PROFILES, MEMBER_TIER_CHANGED
from redis.exceptions import RedisError
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from member_profile import SERVICE_NAME, store
from member_profile.cache import LoyaltyState, ProfileCache
from member_profile.domain import Profile, RfmCutpoints, profile_view, rfm_scores
from member_profile.loyalty import LoyaltyRules, NotEnoughPoints, balance, spend
from member_profile.members import ConsentGiven, ContactDetails, Enrolment, check_birth_date, consent_time
from member_profile.walk import MemberWalk, ProfileAt, leaving_until, needs_visit_history, spend_horizon


def wall_clock() -> datetime:
    return datetime.now(UTC)


class ProfileHandlers:
    def __init__(self, engine: AsyncEngine, cache: ProfileCache, rules: LoyaltyRules, *, topic_prefix: str,
                 wake_relay: Any = None) -> None:
        self.engine = engine
        self.cache = cache
        self.rules = rules
        self.profiles_topic = MEMBER_PROFILES.qualified(topic_prefix)
        self.tiers_topic = MEMBER_TIER_CHANGED.qualified(topic_prefix)
        self.wake_relay = wake_relay or (lambda: None)
        self._rfm: tuple[float, RfmCutpoints | None] = (0.0, None)

    # --- the sales stream ------------------------------------------------------------------

    async def apply_sales(self, conn: AsyncConnection,
                          events: list[Envelope[Sale]]) -> tuple[list[Profile], datetime | None, dict[str, LoyaltyState]]:
        """Inside the consumer's transaction: the batch walked one sale at a time (`walk.MemberWalk`);
        profiles, points, tiers and the events announcing them commit together with the record of
        which sales were applied."""
        if not events:
            return [], await store.as_of(conn), {}
        before = await store.as_of(conn)
        buyers = {e.payload.member_id for e in events if e.payload.member_id is not None}
        books = await store.load_books(conn, buyers, spend_horizon(before, events, self.rules),
                                       leaving_until(events, before, self.rules))
        await store.load_visit_days(conn, books, needs_visit_history(books, events))
        skus = {line.sku for e in events if e.payload.member_id is not None for line in e.payload.lines}
        catalog = await store.catalog_entries(conn, skus)
        erased = await store.erased_members(conn, books)
        walked = MemberWalk(before, books, self.rules, catalog).apply(events)
        as_of = walked.watermark
        assert as_of is not None
        await store.record_purchases(conn, events, as_of)
        changed = [book.profile for book in books.values() if book.touched]
        await store.save_profiles(conn, changed)
        await store.save_points(conn, walked)
        await add_events(conn, store.outbox, self.tiers_topic, await store.save_tiers(conn, walked.tier_moves))
        await add_events(conn, store.outbox, self.profiles_topic,
                         [profile_event(p, erased=p.profile.member_id in erased) for p in walked.profiles])
        moved = {move.member_id for move in walked.tier_moves}
        cached = changed + [books[m].profile for m in sorted(moved) if not books[m].touched]
        return cached, as_of, await loyalty_states(conn, [p.member_id for p in cached])

    async def after_commit(self, outcome: tuple[list[Profile], datetime | None, dict[str, LoyaltyState]]) -> None:
        """Refresh the read cache once the batch is durable (a crash before this only leaves it stale)."""
        changed, as_of, loyalty = outcome
        await self.cache.put(changed, as_of, loyalty)
        self.wake_relay()

    # --- reads -----------------------------------------------------------------------------

    async def rfm_cutpoints(self) -> RfmCutpoints | None:
        """Quintile cut points over the active population, recomputed at most every 30 s."""
        computed_at, cutpoints = self._rfm
        if cutpoints is not None and time.monotonic() - computed_at < 30:
            return cutpoints
        async with self.engine.connect() as conn:
            cutpoints = await store.rfm_cutpoints(conn)
        self._rfm = (time.monotonic(), cutpoints)
        return cutpoints

    async def profile(self, member_id: str) -> dict[str, Any] | None:
        """Served from Redis; a miss reads PostgreSQL and fills the cache."""
        try:
            cached, loyalty, as_of = await self.cache.get(member_id)
        except RedisError:  # the cache is a convenience: PostgreSQL answers while Redis is down
            cached, loyalty, as_of = None, None, None
        if cached is None or loyalty is None or as_of is None:
            async with self.engine.connect() as conn:
                found = await store.load_profiles(conn, [member_id])
                as_of = await store.as_of(conn)
                cached = found.get(member_id)
                if cached is None:
                    return None
                loyalty = (await loyalty_states(conn, [member_id]))[member_id]
            with contextlib.suppress(RedisError):
                await self.cache.put([cached], as_of, {member_id: loyalty})
        view = profile_view(cached, as_of)
        view["rfm"] = rfm_scores(cached, as_of, await self.rfm_cutpoints())
        view["tier"] = loyalty.tier
        view["points_balance"] = loyalty.balance(as_of) if as_of is not None else 0
        return view

    async def history(self, member_id: str, limit: int, before: datetime | None) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            return await store.history(conn, member_id, limit=limit, before=before)

    async def members(self, *, min_monetary: Decimal | None, tier: str | None, limit: int, offset: int,
                      segment: str | None = None) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            found = await store.top_members(conn, min_monetary=min_monetary, tier=tier, limit=limit, offset=offset,
                                            segment=segment)
            as_of = await store.as_of(conn)
            tiers = await store.current_tiers(conn, [p.member_id for p in found])
        cutpoints = await self.rfm_cutpoints()
        views = []
        for profile in found:
            view = profile_view(profile, as_of)
            view["tier"] = tiers.get(profile.member_id, "member")
            view["rfm"] = rfm_scores(profile, as_of, cutpoints)
            views.append(view)
        return {"as_of": as_of, "limit": limit, "offset": offset, "members": views}


def profile_document(profile: Profile, as_of: datetime, *, tier: str, points: int, erased: bool) -> MemberProfileUpdated:
    view = profile_view(profile, as_of)
    return MemberProfileUpdated.model_validate({
        **{k: view[k] for k in ("member_id", "as_of", "first_purchase_at", "last_purchase_at", "recency_days",
                                "frequency", "returns", "monetary", "average_basket_value", "average_basket_size",
                                "returns_rate", "discount_share", "preferred_store", "hour_of_day", "weekday",
                                "visit_rhythm", "categories", "brands")},
        "tier": tier, "points_balance": points, "erased": erased,
    })



def profile_event(at: ProfileAt, *, erased: bool) -> Envelope[Any]:
    """One per sale (identity: the sale's event id) and one per tier a midnight review moved (the day)."""
    member_id = at.profile.member_id
    payload = profile_document(at.profile, at.as_of, tier=at.tier, points=at.points, erased=erased)
    return member_event(payload, event_type="MemberProfileUpdated", member_id=member_id, occurred_at=at.as_of,
                        source=SERVICE_NAME, identity=f"profile/{member_id}/{at.identity}")


async def loyalty_states(conn: AsyncConnection, member_ids: list[str]) -> dict[str, LoyaltyState]:
    lots = await store.load_lots(conn, member_ids)
    tiers = await store.current_tiers(conn, member_ids)
    return {m: LoyaltyState(tiers.get(m, "member"), tuple((lot.remaining, lot.expires_at) for lot in lots.get(m, [])))
            for m in member_ids}


class MemberRefusal(Exception):
    """A command refused: HTTP status, error code, the field it is about, why, and any extra facts."""

    def __init__(self, status: int, error: str, field: str, reason: str, **extra: Any) -> None:
        super().__init__(reason)
        self.status, self.error, self.field, self.reason, self.extra = status, error, field, reason, extra


UNIQUE_FIELDS = {"ux_members_phone": "phone", "ux_members_email": "email", "ux_members_card": "card_number",
                 "members_pkey": "member_id"}


class MemberHandlers:
    """Enrolment, contact details, consent, erasure, points redemption and the call list."""

    def __init__(self, engine: AsyncEngine, cache: ProfileCache, rules: LoyaltyRules, *, topic_prefix: str,
                 clock: Any = wall_clock, wake_relay: Any = None, call_list_sigmas: float = 2.0) -> None:
        self.engine = engine
        self.cache = cache
        self.rules = rules
        self.clock = clock
        self.erased_topic = MEMBER_ERASED.qualified(topic_prefix)
        self.profiles_topic = MEMBER_PROFILES.qualified(topic_prefix)
        self.consents_topic = MEMBER_CONSENTS.qualified(topic_prefix)
        self.wake_relay = wake_relay or (lambda: None)
        self.call_list_sigmas = call_list_sigmas

    def _check_store(self, principal: Principal, store_id: str | None) -> None:
        if principal.role == "pos" and store_id != principal.scope:
            raise MemberRefusal(403, "forbidden", "home_store", f"this key is for store {principal.scope!r}")

    async def enrol(self, enrolment: Enrolment, principal: Principal) -> dict[str, Any]:
        self._check_store(principal, enrolment.home_store)
        now = self.clock()
        problem = check_birth_date(enrolment, now.date())
        if problem:
            raise MemberRefusal(422, "validation_failed", "birth_date", problem)
        member_id = enrolment.member_id or f"m-{uuid.uuid4().hex[:12]}"
        details = enrolment.model_dump(exclude={"member_id", "consents"})
        try:
            async with self.engine.begin() as conn:
                await conn.execute(insert(store.members).values(member_id=member_id, enrolled_at=now, **details))
                await self._record_consents(conn, member_id, enrolment.consents, now)
                await self._publish_contactability(conn, member_id, now)
        except IntegrityError as exc:
            field = next((f for name, f in UNIQUE_FIELDS.items() if name in str(exc.orig)), "member_id")
            raise MemberRefusal(409, "conflict", field, f"another member already has this {field}") from exc
        self.wake_relay()
        return await self.member(member_id, principal)

    async def update(self, member_id: str, details: ContactDetails, principal: Principal) -> dict[str, Any]:
        changes = details.model_dump(exclude_unset=True)
        problem = check_birth_date(details, self.clock().date())
        if problem:
            raise MemberRefusal(422, "validation_failed", "birth_date", problem)
        async with self.engine.begin() as conn:
            record = await store.member_record(conn, member_id, lock=True)
            if record is None or record["erased_at"] is not None:
                raise MemberRefusal(404, "not_found", "member_id", f"no enrolled member {member_id!r}")
            self._check_store(principal, record["home_store"])
            if "home_store" in changes:
                if changes["home_store"] is None:
                    raise MemberRefusal(422, "validation_failed", "home_store", "a member keeps a home store")
                self._check_store(principal, changes["home_store"])
            if changes:
                try:
                    await conn.execute(store.members.update().where(store.members.c.member_id == member_id)
                                       .values(**changes, updated_at=func.now()))
                except IntegrityError as exc:
                    field = next((f for name, f in UNIQUE_FIELDS.items() if name in str(exc.orig)), "member_id")
                    raise MemberRefusal(409, "conflict", field, f"another member already has this {field}") from exc
                if {"birth_date", "home_store"} & changes.keys():
                    await self._publish_contactability(conn, member_id, self.clock())
        self.wake_relay()
        return await self.member(member_id, principal)

    async def set_consent(self, member_id: str, consent: ConsentGiven, principal: Principal) -> dict[str, Any]:
        if consent.at is not None and consent.at > self.clock():
            raise MemberRefusal(422, "validation_failed", "at", "must not be in the future")
        async with self.engine.begin() as conn:
            record = await store.member_record(conn, member_id, lock=True)
            if record is None or record["erased_at"] is not None:
                raise MemberRefusal(404, "not_found", "member_id", f"no enrolled member {member_id!r}")
            self._check_store(principal, record["home_store"])
            await self._record_consents(conn, member_id, [consent], self.clock())
            await self._publish_contactability(conn, member_id, self.clock())
            current = await store.current_consents(conn, member_id)
        self.wake_relay()
        return current

    async def _record_consents(self, conn: AsyncConnection, member_id: str, given: list[ConsentGiven],
                               now: datetime) -> None:
        if given:
            await conn.execute(insert(store.consents), [
                {"member_id": member_id, "channel": c.channel, "granted": c.granted, "given_at": consent_time(c, now),
                 "source": c.source} for c in given])

    async def _publish_contactability(self, conn: AsyncConnection, member_id: str, now: datetime) -> None:
        """`member.consents.v1`: the member's consent per channel, home store and birthday (MM-DD),
        in the same transaction as the change, so a marketing service never contacts on stale consent."""
        record = await store.member_record(conn, member_id)
        enrolled = record is not None and record["erased_at"] is None
        consents = {channel: bool(entry["granted"]) for channel, entry in
                    (await store.current_consents(conn, member_id)).items()} if enrolled else {}
        birth = record["birth_date"] if enrolled and record is not None else None
        payload = MemberContactability(
            member_id=member_id, as_of=now, enrolled=enrolled, consents=consents,
            home_store=record["home_store"] if enrolled and record is not None else None,
            birthday=birth.strftime("%m-%d") if birth is not None else None,
            erased=record is not None and record["erased_at"] is not None)
        await add_events(conn, store.outbox, self.consents_topic, [contactability_event(payload, source=SERVICE_NAME)])

    async def member(self, member_id: str, principal: Principal) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            record = await store.member_record(conn, member_id)
            known = record is not None or await store.is_known(conn, member_id)
            if not known:
                raise MemberRefusal(404, "not_found", "member_id", f"no member {member_id!r}")
            if principal.role == "pos" and (record is None or record["home_store"] != principal.scope):
                raise MemberRefusal(404, "not_found", "member_id", f"no member {member_id!r} at this store")
            consents_now = await store.current_consents(conn, member_id)
        personal = None
        if record is not None and record["erased_at"] is None:
            personal = {k: record[k] for k in ("given_name", "family_name", "email", "phone", "card_number",
                                              "birth_date", "home_store", "enrolled_at")}
        return {"member_id": member_id, "enrolled": record is not None and record["erased_at"] is None,
                "erased_at": None if record is None else record["erased_at"], "personal": personal,
                "consents": consents_now}

    async def lookup(self, *, phone: str | None, email: str | None, card_number: str | None,
                     principal: Principal) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            record = await store.find_member(conn, phone=phone, email=email, card_number=card_number)
        if record is None or (principal.role == "pos" and record["home_store"] != principal.scope):
            raise MemberRefusal(404, "not_found", "member", "no enrolled member matches")
        return await self.member(record["member_id"], principal)

    async def erase(self, member_id: str, principal: Principal) -> dict[str, Any]:
        """Forget the person: personal data and consents go, pseudonymous purchase history stays for
        the aggregates, and `member.erased.v1` tells every other service to forget too."""
        now = self.clock()
        async with self.engine.begin() as conn:
            if not await store.is_known(conn, member_id):
                raise MemberRefusal(404, "not_found", "member_id", f"no member {member_id!r}")
            await store.member_record(conn, member_id, lock=True)  # waits for an edit in flight
            personal = {c: None for c in ("given_name", "family_name", "email", "phone", "card_number", "birth_date")}
            await conn.execute(insert(store.members).values(member_id=member_id, enrolled_at=now, erased_at=now)
                               .on_conflict_do_update(index_elements=["member_id"],
                                                      set_={**personal, "erased_at": now, "updated_at": func.now()}))
            await conn.execute(store.consents.delete().where(store.consents.c.member_id == member_id))
            await conn.execute(store.member_segments.delete().where(store.member_segments.c.member_id == member_id))
            await self._publish_contactability(conn, member_id, now)
            payload = MemberErased(member_id=member_id, erased_at=now, requested_by=principal.key_id)
            await add_events(conn, store.outbox, self.erased_topic, [member_event(
                payload, event_type="MemberErased", member_id=member_id, occurred_at=now, source=SERVICE_NAME,
                identity=f"erased/{member_id}")])
        await self.cache.forget(member_id)
        self.wake_relay()
        return {"member_id": member_id, "erased_at": now}

    async def redeem(self, member_id: str, points: int, idempotency_key: str) -> dict[str, Any]:
        """Spend points (those expiring first), once per idempotency key; never below zero."""
        try:
            return await self._redeem(member_id, points, idempotency_key)
        except IntegrityError:  # the same key raced in from another till: its answer is the answer
            return await self._redeem(member_id, points, idempotency_key)

    async def _redeem(self, member_id: str, points: int, idempotency_key: str) -> dict[str, Any]:
        async with self.engine.begin() as conn:
            done = (await conn.execute(select(store.redemptions).where(
                store.redemptions.c.member_id == member_id,
                store.redemptions.c.idempotency_key == idempotency_key))).first()
            if done is not None:
                if done.points != points:
                    raise MemberRefusal(409, "conflict", "idempotency_key",
                                        f"this key already redeemed {done.points} points, not {points}")
                return {"member_id": member_id, "redeemed": done.points, "balance": done.balance_after,
                        "idempotency_key": idempotency_key, "replayed": True}
            as_of = await store.as_of(conn)
            if as_of is None or not await store.is_known(conn, member_id):
                raise MemberRefusal(404, "not_found", "member_id", f"no member {member_id!r}")
            lots = (await store.load_lots(conn, [member_id], lock=True)).get(member_id, [])
            try:
                taken = spend(lots, points, as_of)
            except NotEnoughPoints as short:
                raise MemberRefusal(409, "not_enough_points", "points", str(short), balance=short.balance) from short
            await store.take_points(conn, taken)
            left = balance(lots, as_of) - points
            await conn.execute(insert(store.points_ledger).values(
                member_id=member_id, kind="redeem", points=-points, cause=f"redeem:{idempotency_key}", occurred_at=as_of))
            await conn.execute(insert(store.redemptions).values(
                member_id=member_id, idempotency_key=idempotency_key, points=points, balance_after=left,
                redeemed_at=as_of))
        await self.cache.forget(member_id)  # after the commit: the next read refills it with the new balance
        return {"member_id": member_id, "redeemed": points, "balance": left, "idempotency_key": idempotency_key,
                "replayed": False}

    async def points(self, member_id: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            as_of = await store.as_of(conn)
            if not await store.is_known(conn, member_id):
                raise MemberRefusal(404, "not_found", "member_id", f"no member {member_id!r}")
            movements = await store.ledger(conn, member_id, limit=100)
            balance_now = (await store.points_balances(conn, [member_id], as_of)).get(member_id, 0)
        return {"member_id": member_id, "as_of": as_of, "balance": balance_now, "movements": movements}

    async def call_list(self, store_id: str, limit: int, principal: Principal) -> dict[str, Any]:
        """The members a store manager phones this week: high value, overdue by their own rhythm."""
        if principal.role == "pos" and principal.scope != store_id:
            raise MemberRefusal(403, "forbidden", "store", f"this key is for store {principal.scope!r}")
        async with self.engine.connect() as conn:
            as_of = await store.as_of(conn)
            if as_of is None:
                return {"store": store_id, "as_of": None, "members": []}
            candidates = await store.overdue_key_customers(conn, store_id=store_id, at=as_of,
                                                           sigmas=self.call_list_sigmas, limit=limit)
            entries = []
            for row in candidates:
                profile = store.profile_from_row(_RowLike(row))
                if store_id not in (row["home_store"], profile.preferred_store):
                    continue
                member_id = profile.member_id
                record = await store.member_record(conn, member_id)
                consents_now = await store.current_consents(conn, member_id)
                phone_ok = consents_now.get("phone", {}).get("granted", False)
                entries.append({
                    "member_id": member_id,
                    "name": None if record is None or record["erased_at"] else
                    " ".join(filter(None, (record["given_name"], record["family_name"]))) or None,
                    "phone": record["phone"] if record is not None and phone_ok and not record["erased_at"] else None,
                    "monetary": profile.monetary,
                    "reason": (f"last visit {row['days_since']:.0f} days ago; usually every "
                               f"{profile.rhythm.mean_days:.0f} ± {profile.rhythm.spread_days:.0f} days"),
                    "days_overdue": round(float(row["days_since"]) - float(row["threshold"]), 1),
                    "last_purchases": await store.history(conn, member_id, limit=3, before=None),
                })
                if len(entries) >= limit:
                    break
        return {"store": store_id, "as_of": as_of, "members": entries}


class _RowLike:
    """Lets `profile_from_row` read a plain mapping."""

    def __init__(self, mapping: dict[str, Any]) -> None:
        self._mapping = mapping
