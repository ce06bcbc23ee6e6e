"""One function per event kind: load → domain → save → emit, inside the consumer's transaction."""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
import time
import uuid
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from crm_shared.events import (
    AssociationRulesChanged,
    Envelope,
    MemberContactability,
    MemberErased,
    MemberProfileUpdated,
    MemberSegmentChanged,
    Product,
    Sale,
    TierChanged,
)
from crm_shared.marketing_events import OfferIssued, OfferReason, offer_event
from crm_shared.outbox import add_events
from crm_shared.serde import encode
from crm_shared.supply_events import GoodsReceipt, LowStock
from crm_shared.topics import MARKETING_OFFERS
from crm_shared.web import ApiError
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from notifier import domain, store
from notifier.chooser import OfferChooser
from notifier.settings import NotifierSettings

log = logging.getLogger(__name__)

OFFERS = Counter("crm_notifier_offers_total", "Offer decisions", ["trigger", "outcome"])
REDEMPTIONS = Counter("crm_notifier_redemptions_total", "Offers redeemed by a later sale", ["arm"])

DEFAULT_CAMPAIGNS: dict[str, dict[str, Any]] = {
    "cross_sell": {"name": "Cross-sell after a sale", "trigger": "cross_sell", "channel": "push",
                   "template": "Goes well with what you just bought: {discount}% off {product} until {valid_to}.",
                   "discount_percent": "10", "validity_days": 7},
    "dormant_wakeup": {"name": "Dormant wake-up", "trigger": "dormant_wakeup", "channel": "email",
                       "template": "We miss you! {discount}% off your next shop until {valid_to}.",
                       "discount_percent": "15", "validity_days": 14},
    "tier_upgrade": {"name": "Tier upgrade thanks", "trigger": "tier_upgrade", "channel": "email",
                     "template": "Thank you: you have moved up a tier. {discount}% off your next shop until {valid_to}.",
                     "discount_percent": "5", "validity_days": 30},
    "welcome": {"name": "Welcome", "trigger": "welcome", "channel": "email",
                "template": "Welcome! {discount}% off your next shop until {valid_to}.",
                "discount_percent": "10", "validity_days": 14},
    "run_out": {"name": "Run-out reminder", "trigger": "run_out", "channel": "push",
                "template": "Running low on {product}? {discount}% off it until {valid_to}.",
                "discount_percent": "5", "validity_days": 5},
    "birthday": {"name": "Happy birthday", "trigger": "birthday", "channel": "email",
                 "template": "Happy birthday! {discount}% off your next shop until {valid_to}.",
                 "discount_percent": "15", "validity_days": 14},
    "new_arrival": {"name": "New arrival for you", "trigger": "new_arrival", "channel": "push",
                    "template": "New in, picked for your taste: {product}. {discount}% off until {valid_to}.",
                    "discount_percent": "10", "validity_days": 10},
}
# after_sale has no default campaign: a marketer names the categories worth a follow-up.
SCHEDULED_TRIGGERS = ("after_sale", "new_arrival")


CHOOSER_STATE = "offer-chooser"
SALES_CLOCK = "sales"  # the latest sale's event time applied, by any replica


def default_campaign_id(trigger: str) -> str:
    return "auto-" + trigger.replace("_", "-")


def pseudonym(member_id: str, key: str) -> str:
    """A keyed hash: member ids are short and enumerable, so a plain hash of one could be reversed."""
    return "erased-" + hmac.new(key.encode(), member_id.encode(), hashlib.sha256).hexdigest()[:16]


def identity_uuid(source_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"crm:{source_id}"))


def campaign_of(row: dict[str, Any]) -> domain.Campaign:
    return domain.Campaign(row["campaign_id"], domain.CampaignDefinition.model_validate(row["definition"]),
                           row["status"], int(row["sent"]))


def rules_of(documents: list[dict[str, Any]]) -> list[domain.Rule]:
    return [domain.Rule(frozenset(d["antecedents"]), d["consequent"], float(d["confidence"]), float(d["lift"]),
                        float(d["support"])) for d in documents]


def purchase_row(sale: Sale) -> dict[str, Any]:
    """A member's sale or return, or a sale scanning offer codes, as `member_purchases` keeps it."""
    return {"member_id": sale.member_id, "sale_id": sale.sale_id, "at": sale.occurred_at, "kind": sale.kind,
            "original_sale_id": sale.original_sale_id, "total": sale.total,
            "lines": [[line.sku, str(line.net), line.offer_code] for line in sale.lines],
            "codes": sorted({line.offer_code for line in sale.lines if line.offer_code})}


def purchase_of(sale: Sale) -> domain.Purchase:
    return domain.Purchase(sale.sale_id, sale.member_id, sale.occurred_at, sale.kind,
                           tuple((line.sku, line.net, line.offer_code) for line in sale.lines), sale.total,
                           sale.original_sale_id)


def purchase_of_row(row: dict[str, Any]) -> domain.Purchase:
    return domain.Purchase(row["sale_id"], row["member_id"], row["at"], row["kind"],
                           tuple((sku, Decimal(net), code) for sku, net, code in row["lines"]), Decimal(row["total"]),
                           row["original_sale_id"])


def offer_state(row: dict[str, Any]) -> domain.OfferState:
    return domain.OfferState(row["offer_id"], row["member_id"], tuple(row["products"]), row["issued_at"],
                             row["valid_to"], row.get("redeemed_at"), row.get("redeemed_revenue"),
                             row.get("redeemed_by"), bool(row.get("redeemed_by_code")))


class NotifierHandlers:
    def __init__(self, engine: AsyncEngine, settings: NotifierSettings, *, topic_prefix: str,
                 wake_relay: Callable[[], None], wake_webhooks: Callable[[], None] = lambda: None) -> None:
        self.engine = engine
        self.settings = settings
        self.offers_topic = MARKETING_OFFERS.qualified(topic_prefix)
        self.wake_relay = wake_relay
        self.wake_webhooks = wake_webhooks
        self.policy = settings.policy()
        self.enabled = settings.enabled_triggers
        self.rules_by_scope: dict[str, list[domain.Rule]] = {}
        self.rule_windows: dict[str, datetime] = {}
        self.calendar_zone = ZoneInfo(settings.default_time_zone)
        # Campaign definitions change seldom and are read by every batch: held here for a moment (a
        # change made through another replica's API shows within `campaign_cache_seconds`).
        self._campaigns: tuple[float, list[domain.Campaign]] = (0.0, [])
        self.chooser = OfferChooser([], epsilon=settings.chooser_epsilon, learning_rate=settings.chooser_learning_rate)
        self._chooser_learned = 0  # outcomes learned in the current batch (the model is saved with it)
        self._purchases_pruned_on: date | None = None

    async def restore(self) -> None:
        async with self.engine.begin() as conn:
            if self.settings.seed_campaigns:
                for trigger in sorted(self.enabled & DEFAULT_CAMPAIGNS.keys()):
                    await store.seed_campaign(conn, default_campaign_id(trigger), DEFAULT_CAMPAIGNS[trigger])
            await self._refresh_rules(conn)
            state = await store.load_model(conn, CHOOSER_STATE)
            if state is not None:
                self.chooser = OfferChooser.loads(state)
                self.chooser.epsilon = self.settings.chooser_epsilon

    # --- sales: offers from the sale, follow-ups due by its time, then redemptions ---------------

    async def apply_sales(self, conn: AsyncConnection, events: list[Envelope[Sale]]) -> int:
        """One batch of sales: the offers held so far meet its sales and returns (redemptions and their
        undoing, in topic order); then, in event-time order, cross-sell, run-out, after-sale scheduling,
        and the follow-ups (after-sale care, new arrivals, birthdays) whose time the batch's clock
        reached; every proposal through the guards at once, and each new offer meets the sales after
        it (an offer made by one sale is redeemed by a later sale of the same batch)."""
        if not events:
            return 0
        # The clock after each event in topic order, from where earlier batches left it: a follow-up, a
        # birthday or a run-out reminder is made at the reading that reached it, as if the sales had
        # been read one event at a time.
        steps = domain.clock_steps((e.payload.occurred_at for e in events), await store.clock(conn, SALES_CLOCK))
        clock = steps[-1]
        ordered = sorted(events, key=lambda e: e.payload.occurred_at)
        sales = [e for e in ordered if e.payload.member_id is not None and e.payload.kind == "sale"]
        returns = [e for e in ordered if e.payload.member_id is not None and e.payload.kind == "return"]
        campaigns = await self._running_all(conn)
        scheduled_at: dict[str, datetime] = {}
        if "after_sale" in self.enabled and campaigns.get("after_sale") and sales:
            # scheduled before the due ones are read: care due within this batch is made in it, at the
            # earliest at the reading of the sale that scheduled it (a sale read days late is cared for
            # when it is read, not at a reading before it)
            readings = {e.event_id: step for e, step in zip(events, steps, strict=True)}
            scheduled_at = await self._schedule_after_sale(conn, sales, campaigns["after_sale"], readings)
        proposals: list[domain.Proposal] = []
        # follow-ups first: they may name members outside this batch, and every member is locked at once
        proposals += await self._due_follow_ups(conn, steps, campaigns, scheduled_at)
        proposals += await self._birthdays(conn, steps, campaigns.get("birthday", []))
        run_out = "run_out" in self.enabled and bool(campaigns.get("run_out"))
        lead = timedelta(days=self.settings.run_out_lead_days)
        due_elsewhere = ({r["member_id"] for r in await store.due_rhythms(conn, steps[0], clock, lead,
                                                                          self.settings.run_out_min_purchases)}
                         if run_out else set())
        member_ids = sorted({e.payload.member_id or "" for e in sales + returns} | {p.member_id for p in proposals}
                            | due_elsewhere)
        await store.lock_members(conn, member_ids)
        self._chooser_learned = 0
        # In topic order: the order every replica and every rerun applies them in. Recorded before any
        # offer of this batch is decided, which then meets the batch's later sales (`_redeem_late`).
        walked = [e.payload for e in events if e.payload.member_id is not None
                  or any(line.offer_code for line in e.payload.lines)]
        await store.record_purchases(conn, [purchase_row(sale) for sale in walked])
        if self._purchases_pruned_on != clock.date():  # once per event day a replica reaches
            horizon = clock - timedelta(days=self.settings.late_offer_memory_days)
            grace = timedelta(seconds=self.settings.late_offer_grace_seconds)
            await store.forget_purchases(conn, horizon, grace)
            await store.forget_stock_signals(conn, horizon, grace)
            self._purchases_pruned_on = clock.date()
        if walked:  # offers held before this batch; every sale may carry offer codes (forwarded ones too)
            await self._redeem(conn, walked)
        if run_out:
            proposals += await self._run_out(conn, [e.payload for e in events], steps, campaigns["run_out"],
                                             locked=set(member_ids))
        if "cross_sell" in self.enabled and campaigns.get("cross_sell") and sales:
            await self._refresh_rules(conn)
            proposals += await self._cross_sell(conn, sales, campaigns["cross_sell"])
        issued = await self._issue(conn, proposals, locked=True)
        if any(c.definition.chooser == "learned" for c in self._campaigns[1]):
            await self._learn_expired(conn, clock)
        if self._chooser_learned:  # the model moves with the outcomes, in the same transaction
            await store.save_model(conn, CHOOSER_STATE, self.chooser.dumps())
        await store.advance_clock(conn, SALES_CLOCK, clock)  # last: its row lock is held until the commit
        return issued

    async def _cross_sell(self, conn: AsyncConnection, sales: list[Envelope[Sale]],
                          campaigns: list[domain.Campaign]) -> list[domain.Proposal]:
        """The strongest matching rule's product; or, for a campaign with the learned chooser, the one among
        its strongest `candidates` the online model expects this member to redeem (epsilon explores)."""
        learned = any(c.definition.chooser == "learned" for c in campaigns)
        members = (await store.load_members(conn, sorted({e.payload.member_id or "" for e in sales}))
                   if learned else {})
        proposals = []
        for event in sales:
            sale = event.payload
            bought = [line.sku for line in sale.lines]
            scope, rules = domain.rules_for_store(self.rules_by_scope, sale.store_id)
            if not rules:
                continue
            for campaign in campaigns:
                definition = campaign.definition
                features = None
                if definition.chooser == "learned":
                    options = domain.cross_sell_candidates(bought, rules, min_confidence=definition.min_confidence,
                                                           min_lift=definition.min_lift, limit=definition.candidates)
                    if not options:
                        continue
                    held = members.get(sale.member_id or "") or {}
                    facts = domain.MemberFacts(sale.member_id or "", held.get("tier"), held.get("preferred_store"),
                                               frozenset(held.get("segments") or ()))
                    features = domain.chooser_features(facts, held.get("categories") or ())
                    draw = random.Random(f"{campaign.campaign_id}/{event.event_id}")
                    product = self.chooser.choose(features, [r.consequent for r in options], rng=draw)
                    rule = next(r for r in options if r.consequent == product)
                else:
                    rule = domain.cross_sell(bought, rules, min_confidence=definition.min_confidence,
                                             min_lift=definition.min_lift)
                if rule is None:
                    continue
                detail = (f"{' + '.join(sorted(rule.antecedents))} -> {rule.consequent} "
                          f"(confidence {rule.confidence:.2f}, lift {rule.lift:.2f}, {scope} rules"
                          f"{', chosen by the learned model' if features is not None else ''})")
                proposals.append(domain.Proposal(campaign.campaign_id, sale.member_id or "", "cross_sell",
                                                 (rule.consequent,), sale.store_id, sale.occurred_at, detail,
                                                 str(event.event_id), rule=rule, rule_scope=scope, features=features))
        return proposals

    async def _learn_expired(self, conn: AsyncConnection, clock: datetime) -> None:
        """Chosen offers whose window closed unredeemed teach the chooser a "no"."""
        expired = await store.expired_unlearned(conn, clock)
        for offer in expired:
            if offer["products"] and offer["features"]:
                self.chooser.learn_one(offer["features"], offer["products"][0], False)
        await store.mark_learned(conn, [o["offer_id"] for o in expired])
        self._chooser_learned += len(expired)

    async def _run_out(self, conn: AsyncConnection, events: list[Sale], steps: list[datetime],
                       campaigns: list[domain.Campaign], *, locked: set[str]) -> list[domain.Proposal]:
        """Keep each member's rhythm per product; remind before the predicted re-purchase, in event time,
        at the clock reading that entered the reminder window (`domain.walk_rhythms`)."""
        bought: dict[tuple[str, str], list[int]] = {}
        for index, sale in enumerate(events):
            if sale.member_id is not None and sale.kind == "sale":
                for sku in sorted({line.sku for line in sale.lines}):
                    bought.setdefault((sale.member_id, sku), []).append(index)
        held = await store.load_rhythms(conn, sorted(bought))
        lead = timedelta(days=self.settings.run_out_lead_days)
        # rhythms whose window the batch's clock may enter; their members were locked with the batch's
        # (one that became due since is another consumer's, or the next batch's, to remind)
        held |= {(r["member_id"], r["sku"]): r for r in await store.due_rhythms(
            conn, steps[0], steps[-1], lead, self.settings.run_out_min_purchases) if r["member_id"] in locked}
        rhythms = {key: domain.Rhythm(int(r["purchases"]), r["first_at"], r["last_at"], r["reminded_for"])
                   for key, r in held.items()}
        after, reminders = domain.walk_rhythms(rhythms, bought, [e.occurred_at for e in events], steps, lead=lead,
                                               min_purchases=self.settings.run_out_min_purchases)
        await store.save_rhythms(conn, [
            {"member_id": m, "sku": k, "purchases": r.purchases, "first_at": r.first_at, "last_at": r.last_at,
             "due_at": r.due_at, "interval_seconds": r.mean_interval.total_seconds() if r.mean_interval else None,
             "reminded_for": r.reminded_for} for (m, k), r in sorted(after.items()) if (m, k) in bought])
        await store.mark_reminded(conn, [(m, k, due_at) for (m, k), due_at, _, _ in reminders])
        proposals = []
        for (member_id, sku), due_at, at, rhythm in sorted(reminders, key=lambda r: (r[2], r[0])):
            identity = identity_uuid(f"run-out/{member_id}/{sku}/{due_at.isoformat()}")
            proposals.extend(domain.Proposal(
                c.campaign_id, member_id, "run_out", (sku,), None, at,
                f"bought {rhythm.purchases} times, every {rhythm.mean_interval}; next due {due_at.isoformat()}"[:500],
                identity) for c in campaigns)
        return proposals

    async def _schedule_after_sale(self, conn: AsyncConnection, sales: list[Envelope[Sale]],
                                   campaigns: list[domain.Campaign],
                                   readings: dict[uuid.UUID, datetime]) -> dict[str, datetime]:
        """A purchase in a followed-up category schedules care `delay_days` later in event time.
        Returns, per follow-up, the clock reading at the sale that scheduled it."""
        catalog = await store.categories_of(conn, [line.sku for e in sales for line in e.payload.lines])
        rows = []
        scheduled_at: dict[str, datetime] = {}
        for event in sales:
            for line in event.payload.lines:
                category = (catalog.get(line.sku) or {}).get("category")
                for campaign in campaigns:
                    if category and category in campaign.definition.categories:
                        rows.append({"source_id": f"after-sale/{campaign.campaign_id}/{event.event_id}/{line.sku}"[:200],
                                     "trigger": "after_sale", "campaign_id": campaign.campaign_id,
                                     "member_id": event.payload.member_id, "sku": line.sku,
                                     "store_id": event.payload.store_id,
                                     "due_at": event.payload.occurred_at + timedelta(days=campaign.definition.delay_days),
                                     "detail": f"bought {line.sku} ({category}) on "
                                               f"{event.payload.occurred_at.date().isoformat()}"[:500]})
                        scheduled_at[rows[-1]["source_id"]] = readings[event.event_id]
        await store.schedule(conn, rows)
        return scheduled_at

    async def _due_follow_ups(self, conn: AsyncConnection, steps: list[datetime],
                              campaigns: dict[str, list[domain.Campaign]],
                              scheduled_at: dict[str, datetime]) -> list[domain.Proposal]:
        """After-sale care and new arrivals whose event time has come, each made at the clock reading
        that reached it (and not before the reading that scheduled it, in this batch)."""
        clock = steps[-1]
        due = await store.due_scheduled(conn, clock)
        if not due:
            return []
        proposals: list[domain.Proposal] = []
        launches = [row for row in due if row["trigger"] == "new_arrival"]
        catalog = await store.categories_of(conn, [row["sku"] for row in launches])
        for row in due:
            identity = identity_uuid(row["source_id"])
            reached = domain.first_reaching(steps, max(row["due_at"], scheduled_at.get(row["source_id"], row["due_at"])))
            if row["trigger"] == "after_sale":
                for campaign in campaigns.get("after_sale", []):
                    if campaign.campaign_id == row["campaign_id"]:
                        proposals.append(domain.Proposal(campaign.campaign_id, row["member_id"], "after_sale",
                                                         (row["sku"],), row["store_id"], reached, row["detail"],
                                                         identity))
            elif row["trigger"] == "new_arrival":
                product = catalog.get(row["sku"]) or {}
                for campaign in campaigns.get("new_arrival", []):
                    wanted = campaign.definition.categories
                    if wanted and product.get("category") not in wanted:
                        continue
                    for member_id in await store.members_with_habit(
                            conn, category=product.get("category"), brand=product.get("brand"),
                            limit=self.settings.new_arrival_max_members):
                        proposals.append(domain.Proposal(
                            campaign.campaign_id, member_id, "new_arrival", (row["sku"],), None, reached,
                            row["detail"], identity))
        await store.mark_fired(conn, [row["source_id"] for row in due], clock)
        return proposals

    async def _birthdays(self, conn: AsyncConnection, steps: list[datetime],
                         campaigns: list[domain.Campaign]) -> list[domain.Proposal]:
        """When event time enters a new calendar day, the members whose birthday it is (made at the clock
        reading that entered the day)."""
        if "birthday" not in self.enabled or not campaigns:
            return []
        clock = steps[-1]
        previous = await store.clock(conn, "calendar_day")
        if previous is not None and clock.astimezone(self.calendar_zone).date() <= previous.astimezone(
                self.calendar_zone).date():
            return []
        previous = await store.advance_clock(conn, "calendar_day", clock)  # locks the row: one consumer per day
        proposals = []
        for day, at in domain.days_entered_by(previous, steps, self.calendar_zone):
            for row in await store.birthdays(conn, sorted(domain.birthdays_on(day)),
                                             limit=self.settings.birthday_max_members):
                identity = identity_uuid(f"birthday/{row['member_id']}/{day.isoformat()}")
                proposals.extend(domain.Proposal(c.campaign_id, row["member_id"], "birthday",
                                                 tuple(c.definition.products), row["home_store"], at,
                                                 f"birthday on {day.isoformat()}", identity) for c in campaigns)
        return proposals

    async def _redeem(self, conn: AsyncConnection, sales: list[Sale]) -> None:
        """The offers held before this batch meet its sales and returns in topic order
        (`domain.walk_redemptions`): a scanned code, or a purchase of an offered product inside the
        window, redeems; a return of it from the redeeming sale undoes that."""
        member_ids = sorted({s.member_id for s in sales if s.member_id})
        buying = [s for s in sales if s.kind == "sale"]
        skus = sorted({line.sku for sale in buying for line in sale.lines})
        codes = sorted({line.offer_code for sale in buying for line in sale.lines if line.offer_code})
        returned = sorted({s.original_sale_id for s in sales if s.kind == "return" and s.original_sale_id})
        held = {o["offer_id"]: o for o in await store.open_offers(conn, member_ids, min(s.occurred_at for s in sales),
                                                                   skus)}
        held |= {o["offer_id"]: o for o in await store.offers_by_code(conn, codes)}
        held |= {o["offer_id"]: o for o in await store.offers_redeemed_by(conn, member_ids, returned)}
        if held:
            changed = domain.walk_redemptions([offer_state(o) for o in held.values()],
                                              [purchase_of(sale) for sale in sales])
            await self._save_redemptions(conn, changed, held)

    async def _redeem_late(self, conn: AsyncConnection, offers: list[dict[str, Any]]) -> None:
        """Offers just decided meet the sales of their window the notifier applied before them (a tier
        or segment event read after its member's later sales, or after a sale that scanned its code):
        the same sale redeems them as would have if the offer had been there first."""
        stored = await store.purchases_since(conn, sorted({o["member_id"] for o in offers}),
                                             [o["offer_id"] for o in offers], min(o["issued_at"] for o in offers))
        if stored:
            changed = domain.walk_redemptions([offer_state(o) for o in offers], [purchase_of_row(p) for p in stored])
            await self._save_redemptions(conn, changed, {o["offer_id"]: o for o in offers})

    async def _save_redemptions(self, conn: AsyncConnection, changed: list[domain.OfferState],
                                known: dict[str, dict[str, Any]]) -> None:
        """Each change only if the offer is still as it was loaded (another replica's batch may have
        redeemed it by a forwarded code meanwhile: the first to commit wins, and learns once)."""
        saved = await store.save_redemptions(conn, [
            {"offer_id": s.offer_id, "held_by": s.held_by, "redeemed_at": s.redeemed_at,
             "redeemed_revenue": s.redeemed_revenue, "redeemed_by": s.redeemed_by,
             "redeemed_by_code": s.redeemed_by_code} for s in changed])
        learned = []
        for state in changed:
            if state.redeemed_by is None or state.offer_id not in saved:
                continue
            REDEMPTIONS.labels("code" if state.redeemed_by_code else "purchase").inc()
            offer = known.get(state.offer_id) or {}
            if offer.get("features") is not None and offer["products"] and not offer.get("learned"):
                self.chooser.learn_one(offer["features"], offer["products"][0], True)
                learned.append(state.offer_id)
        await store.mark_learned(conn, learned)
        self._chooser_learned += len(learned)

    # --- member events ---------------------------------------------------------------------------

    async def apply_segments(self, conn: AsyncConnection, events: list[Envelope[MemberSegmentChanged]]) -> int:
        ordered = sorted(events, key=lambda e: e.payload.as_of)
        await store.lock_members(conn, sorted({e.payload.member_id for e in ordered}))
        await store.set_segments(conn, [{"member_id": e.payload.member_id, "segments": sorted(set(e.payload.current.values())),
                                         "segments_as_of": e.payload.as_of} for e in ordered])
        if "dormant_wakeup" not in self.enabled:
            return 0
        campaigns = (await self._running_all(conn)).get("dormant_wakeup", [])
        proposals = [
            domain.Proposal(c.campaign_id, e.payload.member_id, "dormant_wakeup", tuple(c.definition.products), None,
                            e.payload.as_of, f"persona {e.payload.old} -> dormant: {e.payload.reason}"[:500],
                            str(e.event_id), segment="dormant")
            for e in ordered if domain.is_dormant_transition(e.payload.dimension, e.payload.old, e.payload.new)
            for c in campaigns]
        return await self._issue(conn, proposals, locked=True)  # locked above

    async def apply_tiers(self, conn: AsyncConnection, events: list[Envelope[TierChanged]]) -> int:
        ordered = sorted(events, key=lambda e: e.payload.effective_at)
        await store.lock_members(conn, sorted({e.payload.member_id for e in ordered}))
        await store.set_tiers(conn, [{"member_id": e.payload.member_id, "tier": e.payload.new_tier,
                                      "tier_as_of": e.payload.effective_at} for e in ordered])
        if "tier_upgrade" not in self.enabled:
            return 0
        campaigns = (await self._running_all(conn)).get("tier_upgrade", [])
        proposals = [
            domain.Proposal(c.campaign_id, e.payload.member_id, "tier_upgrade", tuple(c.definition.products), None,
                            e.payload.effective_at, f"tier {e.payload.old_tier} -> {e.payload.new_tier}",
                            str(e.event_id), segment=e.payload.new_tier)
            for e in ordered if domain.is_upgrade(e.payload.old_tier, e.payload.new_tier) for c in campaigns]
        return await self._issue(conn, proposals, locked=True)  # locked above

    async def apply_profiles(self, conn: AsyncConnection, events: list[Envelope[MemberProfileUpdated]]) -> int:
        latest: dict[str, Envelope[MemberProfileUpdated]] = {}
        first: dict[str, Envelope[MemberProfileUpdated]] = {}
        for event in sorted(events, key=lambda e: e.payload.as_of):
            latest[event.payload.member_id] = event
            first.setdefault(event.payload.member_id, event)
        await store.lock_members(conn, sorted(latest))
        known = await store.load_members(conn, sorted(latest))
        # welcome once: the first profile the notifier sees of a member with at most one visit (a segment
        # or tier event that arrived first made a row, but no profile); never for one the batch says is erased
        newcomers = [e for m, e in first.items()
                     if domain.is_first_profile(bool(known.get(m, {}).get("profile_seen")), e.payload.frequency)
                     and not latest[m].payload.erased]
        await store.upsert_profiles(conn, [
            {"member_id": m, "tier": e.payload.tier, "preferred_store": e.payload.preferred_store,
             "categories": sorted(e.payload.categories)[:20], "brands": sorted(e.payload.brands)[:20],
             "segments": [], "first_seen_at": first[m].payload.as_of, "profile_as_of": e.payload.as_of}
            for m, e in latest.items() if not e.payload.erased])
        if "welcome" not in self.enabled or not newcomers:
            return 0
        campaigns = (await self._running_all(conn)).get("welcome", [])
        proposals = [
            domain.Proposal(c.campaign_id, e.payload.member_id, "welcome", tuple(c.definition.products),
                            e.payload.preferred_store, e.payload.as_of, "first profile of a new member",
                            str(e.event_id)) for e in newcomers for c in campaigns]
        return await self._issue(conn, proposals, locked=True)  # locked above

    async def apply_contacts(self, conn: AsyncConnection, events: list[Envelope[MemberContactability]]) -> None:
        """Consent per channel, home store and birthday from member-profile (`member.consents.v1`). Under
        the members' locks: an erasure applied by the erasures consumer at the same moment either sees
        this row and deletes it, or is seen by it and this row is not written."""
        await store.lock_members(conn, sorted({e.payload.member_id for e in events}))
        await store.upsert_contacts(conn, [
            {"member_id": e.payload.member_id, "enrolled": e.payload.enrolled and not e.payload.erased,
             "consents": {k: bool(v) for k, v in e.payload.consents.items()} if not e.payload.erased else {},
             "home_store": e.payload.home_store, "birthday": e.payload.birthday, "as_of": e.payload.as_of}
            for e in events])

    async def apply_erasures(self, conn: AsyncConnection, events: list[Envelope[MemberErased]]) -> None:
        await store.lock_members(conn, sorted({e.payload.member_id for e in events}))
        for event in events:
            await store.erase(conn, event.payload.member_id, event.payload.erased_at,
                              pseudonym(event.payload.member_id, self.settings.pseudonym_key))

    # --- rules, catalog and stock ------------------------------------------------------------------

    async def apply_rules(self, conn: AsyncConnection, events: list[Envelope[AssociationRulesChanged]]) -> bool:
        changed = False
        for event in sorted(events, key=lambda e: e.payload.window_end):
            rules = event.payload
            changed |= await store.save_rules(conn, rules.scope, rules.window_end,
                                              [r.model_dump(mode="json") for r in rules.rules])
        return changed

    async def after_rules(self, changed: bool) -> None:
        if changed:
            async with self.engine.connect() as conn:
                await self._refresh_rules(conn)

    async def _refresh_rules(self, conn: AsyncConnection) -> None:
        """The rules another replica's consumer stored since this one loaded them (one small query:
        each scope's window end; the rules themselves only when one moved)."""
        windows = await store.rule_windows(conn)
        if windows != self.rule_windows:
            self.rules_by_scope = {scope: rules_of(docs) for scope, docs in (await store.load_rules(conn)).items()}
            self.rule_windows = windows

    async def apply_catalog(self, conn: AsyncConnection, events: list[Envelope[Product]]) -> None:
        """Category and brand per SKU (after-sale care, new arrivals); a product with `launched_at` is a
        new arrival, offered when event time reaches its launch to members with that category or brand."""
        await store.upsert_products(conn, [{"sku": e.payload.sku, "category": e.payload.category,
                                            "brand": e.payload.brand, "launched_at": e.payload.launched_at}
                                           for e in events])
        if "new_arrival" in self.enabled:
            await store.schedule(conn, [
                {"source_id": f"new-arrival/{e.payload.sku}/{e.payload.launched_at.isoformat()}"[:200],
                 "trigger": "new_arrival", "campaign_id": None, "member_id": None, "sku": e.payload.sku,
                 "store_id": None, "due_at": e.payload.launched_at,
                 "detail": f"new {e.payload.category or 'product'}"
                           f"{' by ' + e.payload.brand if e.payload.brand else ''}: {e.payload.sku}"[:500]}
                for e in events if e.payload.launched_at is not None])

    async def apply_low_stock(self, conn: AsyncConnection, events: list[Envelope[LowStock]]) -> None:
        """Replenishment's low-stock reports: the SKU is held at that store from the report's event time
        until goods arrive (`domain.low_at`)."""
        await store.record_stock_signals(conn, [{"store_id": e.payload.store_id, "sku": e.payload.sku,
                                                 "at": e.payload.as_of, "kind": "low",
                                                 "days_of_cover": e.payload.days_of_cover} for e in events])

    async def apply_receipts(self, conn: AsyncConnection, events: list[Envelope[GoodsReceipt]]) -> None:
        """Goods received at a store: from their event time on, the SKUs' low-stock holds there end."""
        await store.record_stock_signals(conn, [{"store_id": e.payload.store_id, "sku": line.sku,
                                                 "at": e.payload.received_at, "kind": "received",
                                                 "days_of_cover": None}
                                                for e in events for line in e.payload.lines])

    async def after_offers(self, issued: int) -> None:
        if issued:
            self.wake_relay()
            self.wake_webhooks()

    # --- the guards, for every trigger ------------------------------------------------------------

    async def _running_all(self, conn: AsyncConnection) -> dict[str, list[domain.Campaign]]:
        """Running campaigns by trigger (held `campaign_cache_seconds`; budgets are read fresh in `_issue`)."""
        expires, held = self._campaigns
        if time.monotonic() >= expires:
            held = [campaign_of(r) for r in await store.load_campaigns(conn)]
            self._campaigns = (time.monotonic() + self.settings.campaign_cache_seconds, held)
        out: dict[str, list[domain.Campaign]] = {}
        for campaign in held:
            if campaign.status == "running" and campaign.definition.trigger in self.enabled:
                out.setdefault(campaign.definition.trigger, []).append(campaign)
        return out

    def forget_campaigns(self) -> None:
        self._campaigns = (0.0, [])

    async def _issue(self, conn: AsyncConnection, proposals: list[domain.Proposal], *, locked: bool = False) -> int:
        """Every proposal through the guards; offers, suppression counts and outbox rows in the caller's
        transaction. `locked`: the caller holds the proposals' members' locks already."""
        if not proposals:
            return 0
        member_ids = sorted({p.member_id for p in proposals})
        earliest = min(p.at for p in proposals)  # deferral below only moves times later
        if not locked:
            await store.lock_members(conn, member_ids)  # before reading their sends: the caps hold across consumers
        campaign_ids = sorted({p.campaign_id for p in proposals})
        held = {c.campaign_id: c for c in self._campaigns[1]}
        if all(c in held and held[c].definition.budget is None for c in campaign_ids):
            campaigns = {c: held[c] for c in campaign_ids}  # no budget to count: the held definitions do
        else:  # a budget is counted against the sends committed so far, by any replica
            campaigns = {r["campaign_id"]: campaign_of(r) for r in await store.load_campaigns(conn, campaign_ids)}
        members = await store.load_members(conn, member_ids)
        # Triggered in quiet hours: out when they end (`domain.deliverable_at`), every guard judged then.
        proposals = sorted((replace(p, at=domain.deliverable_at(p, (members.get(p.member_id) or {}).get("preferred_store"),
                                                                self.policy)) for p in proposals),
                           key=lambda p: (p.at, p.member_id, p.campaign_id))
        erased = await store.erased_among(conn, member_ids)
        history: dict[str, list[domain.PastOffer]] = {}
        for row in await store.history(conn, member_ids, earliest - timedelta(days=7)):
            history.setdefault(row["member_id"], []).append(domain.PastOffer(
                row["campaign_id"], tuple(row["products"]), row["issued_at"], row["valid_to"], row["withheld"]))
        low = await self._held_low(conn, proposals, members)
        consents = await store.consents_of(conn, [m for m in member_ids if m not in erased])
        sent_now: Tally[str] = Tally()
        suppressed: Tally[tuple[str, str]] = Tally()
        outcomes: Tally[tuple[str, str]] = Tally()
        rows: list[dict[str, Any]] = []
        events: dict[str, Any] = {}
        for proposal, held_low in zip(proposals, low, strict=True):
            campaign = campaigns.get(proposal.campaign_id)
            if campaign is None:
                continue
            campaign = domain.Campaign(campaign.campaign_id, campaign.definition, campaign.status,
                                       campaign.sent + sent_now[campaign.campaign_id])
            row = members.get(proposal.member_id) or {}
            facts = domain.MemberFacts(proposal.member_id, row.get("tier"), row.get("preferred_store"),
                                       frozenset(row.get("segments") or ()), proposal.member_id in erased)
            consent = consents.get(proposal.member_id, {}).get(campaign.definition.channel, False)
            decision = domain.decide(proposal, campaign, facts, consent=consent,
                                     history=history.get(proposal.member_id, []),
                                     low_stock=held_low, policy=self.policy)
            outcomes[(proposal.trigger, decision.reason or decision.action)] += 1
            if decision.action == "suppress":
                suppressed[(proposal.campaign_id, decision.reason or "unknown")] += 1
                continue
            offer = self._offer(proposal, campaign, withheld=decision.action == "withhold")
            history.setdefault(proposal.member_id, []).append(domain.PastOffer(
                proposal.campaign_id, proposal.products, proposal.at, offer.valid_to, offer.withheld))
            rows.append({"offer_id": offer.offer_id, "campaign_id": offer.campaign_id, "member_id": offer.member_id,
                         "trigger": proposal.trigger, "channel": offer.channel, "products": list(offer.products),
                         "store_id": offer.store_id, "text": offer.text, "issued_at": offer.valid_from,
                         "valid_to": offer.valid_to, "withheld": offer.withheld, "features": proposal.features})
            events[offer.offer_id] = offer_event(offer)
            if not offer.withheld:
                sent_now[campaign.campaign_id] += 1
        new_ids = await store.add_offers(conn, rows)
        if new_ids:
            await self._redeem_late(conn, [r for r in rows if r["offer_id"] in new_ids])
        fresh = [events[r["offer_id"]] for r in rows if r["offer_id"] in new_ids]
        # Deferred out of quiet hours in live traffic: held until `valid_from` on the wall clock (a tool
        # reading the topic never gets a 23:00 push before 08:00); one valid from the past, a replay's, goes now.
        now = datetime.now(UTC)
        await add_events(conn, store.outbox, self.offers_topic, [e for e in fresh if e.payload.valid_from <= now])
        await store.defer_offers(conn, [e for e in fresh if e.payload.valid_from > now])
        if self.settings.webhook_url:
            # First posted at the offer's `valid_from` on the wall clock: one deferred out of quiet hours
            # waits for their end (one valid from the past, a replay's, goes at once).
            await store.enqueue_webhooks(conn, [{"offer_id": e.payload.offer_id, "body": encode(e).decode(),
                                                 "next_attempt_at": e.payload.valid_from}
                                                for e in fresh if not e.payload.withheld])
        await store.count_sent(conn, dict(Tally(r["campaign_id"] for r in rows
                                               if r["offer_id"] in new_ids and not r["withheld"])))
        await store.count_suppressions(conn, dict(suppressed))
        for (trigger, outcome), n in outcomes.items():
            OFFERS.labels(trigger, outcome).inc(n)  # counted per decision taken; a rolled-back batch recounts
        return len(new_ids)

    async def _held_low(self, conn: AsyncConnection, proposals: list[domain.Proposal],
                        members: dict[str, dict[str, Any]]) -> list[frozenset[str]]:
        """Per proposal, in their order: its products held as low at its store (the sale's, else the
        member's preferred one) at its event time (`domain.low_at`)."""
        places = [p.store_id or (members.get(p.member_id) or {}).get("preferred_store") for p in proposals]
        wanted: dict[tuple[str, str], tuple[datetime, datetime]] = {}
        for proposal, store_id in zip(proposals, places, strict=True):
            for sku in proposal.products if store_id else ():
                since, until = wanted.get((store_id, sku), (proposal.at, proposal.at))
                wanted[(store_id, sku)] = (min(since, proposal.at), max(until, proposal.at))
        signals = {key: [domain.StockSignal(r["at"], r["kind"]) for r in rows]
                   for key, rows in (await store.stock_signals_for(conn, wanted)).items()}
        return [frozenset(sku for sku in p.products if domain.low_at(signals.get((store_id, sku), ()), p.at))
                if store_id else frozenset() for p, store_id in zip(proposals, places, strict=True)]

    @staticmethod
    def _offer(proposal: domain.Proposal, campaign: domain.Campaign, *, withheld: bool) -> OfferIssued:
        definition = campaign.definition
        valid_to = proposal.at + timedelta(days=definition.validity_days)
        rule = proposal.rule
        text = "" if withheld else domain.render(definition.template, member_id=proposal.member_id,
                                                 products=proposal.products, discount=definition.discount_percent,
                                                 valid_to=valid_to, store_id=proposal.store_id)
        reason = OfferReason(trigger=proposal.trigger, detail=proposal.detail[:500], source_event_id=proposal.source_event_id,
                             rule_scope=proposal.rule_scope,
                             rule_antecedents=sorted(rule.antecedents) if rule else [],
                             rule_consequent=rule.consequent if rule else None,
                             rule_confidence=rule.confidence if rule else None, rule_lift=rule.lift if rule else None,
                             segment=proposal.segment)
        return OfferIssued(offer_id=proposal.offer_id, member_id=proposal.member_id, campaign_id=proposal.campaign_id,
                           channel=definition.channel, template=definition.template, text=text,
                           products=list(proposal.products), discount_percent=definition.discount_percent,
                           reason=reason, store_id=proposal.store_id, valid_from=proposal.at, valid_to=valid_to,
                           withheld=withheld)

    # --- campaigns (the HTTP side) ------------------------------------------------------------------

    async def put_campaign(self, campaign_id: str, definition: domain.CampaignDefinition) -> tuple[dict[str, Any], bool]:
        """Create (as a draft) or change a campaign. Once it has run, its trigger, channel and control
        share stay (they decide who is measured against whom): a different experiment is a new campaign."""
        async with self.engine.begin() as conn:
            held = await store.load_campaigns(conn, [campaign_id], lock=True)
            if held and held[0]["status"] != "draft":
                before = held[0]["definition"]
                after = definition.model_dump(mode="json")
                for field in domain.FROZEN_ONCE_STARTED:
                    if before.get(field) != after.get(field):
                        raise CampaignRefusal(409, "conflict", field,
                                              f"cannot change {field} of a campaign that has been started "
                                              f"({before.get(field)!r}); create a new campaign")
            await store.save_campaign(conn, campaign_id, definition.model_dump(mode="json"), "draft")
        self.forget_campaigns()
        found = await self.campaign(campaign_id)
        assert found is not None
        return found, not held

    async def campaign(self, campaign_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            rows = [r for r in await store.load_campaigns(conn) if r["campaign_id"] == campaign_id]
        return _campaign_document(rows[0]) if rows else None

    async def campaigns(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            return [_campaign_document(r) for r in await store.load_campaigns(conn)]

    async def set_status(self, campaign_id: str, status: str) -> dict[str, Any] | None:
        async with self.engine.begin() as conn:
            if not await store.set_status(conn, campaign_id, status):
                return None
        self.forget_campaigns()
        return await self.campaign(campaign_id)

    async def preview(self, campaign_id: str, sample: int = 10) -> dict[str, Any] | None:
        found = await self.campaign(campaign_id)
        if found is None:
            return None
        definition = domain.CampaignDefinition.model_validate(found["definition"])
        async with self.engine.connect() as conn:
            size, members = await store.audience(conn, segments=definition.segments, tiers=definition.tiers,
                                                 stores=definition.stores, sample=sample)
        control = sum(1 for m in members if domain.in_control_group(m, campaign_id, definition.control_share))
        return {"campaign_id": campaign_id, "trigger": definition.trigger, "audience": size,
                "control_share": definition.control_share,
                "expected_control": round(size * definition.control_share),
                "budget": definition.budget,
                "samples": [{"member_id": m,
                             "withheld": domain.in_control_group(m, campaign_id, definition.control_share),
                             "text": domain.render(definition.template, member_id=m,
                                                   products=definition.products or ["<product from the rule>"],
                                                   discount=definition.discount_percent,
                                                   valid_to=datetime(2000, 1, 1) + timedelta(days=definition.validity_days),
                                                   store_id=None)}
                            for m in members],
                "note": "audience = members the notifier has seen that match the filters; triggers pick who and when",
                "sampled_control": control}

    async def report(self, campaign_id: str) -> dict[str, Any] | None:
        found = await self.campaign(campaign_id)
        if found is None:
            return None
        async with self.engine.connect() as conn:
            figures = await store.campaign_figures(conn, campaign_id)
        arms = figures["arms"]
        treated = arms.get(False, {"members": 0, "converted": 0, "offers": 0, "redeemed": 0, "revenue": 0})
        control = arms.get(True, {"members": 0, "converted": 0, "offers": 0, "redeemed": 0, "revenue": 0})
        result = domain.uplift(domain.Arm(treated["members"], treated["converted"], Decimal(treated["revenue"])),
                               domain.Arm(control["members"], control["converted"], Decimal(control["revenue"])))
        return {"campaign_id": campaign_id, "status": found["status"],
                "sent": treated["offers"], "withheld": control["offers"],
                "waiting_for_quiet_hours_end": figures["waiting"],
                "suppressed": figures["suppressed"], "suppressed_total": sum(figures["suppressed"].values()),
                "redeemed": {"treated": treated["redeemed"], "control": control["redeemed"]},
                "members": {"treated": treated["members"], "control": control["members"]},
                "converted": {"treated": treated["converted"], "control": control["converted"]},
                "conversion": {"treated": result.treated_rate, "control": result.control_rate},
                "uplift": result.uplift, "uplift_ci95": list(result.ci95) if result.ci95 else None,
                "revenue": {"treated": str(treated["revenue"]), "control": str(control["revenue"])},
                "incremental_revenue": None if result.incremental_revenue is None else str(result.incremental_revenue)}

    async def webhook_figures(self) -> dict[str, int]:
        async with self.engine.connect() as conn:
            return await store.webhook_figures(conn)

    async def member_offers(self, member_id: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await store.member_offers(conn, member_id)
        return [{**r, "products": list(r["products"]),
                 "redeemed_revenue": None if r["redeemed_revenue"] is None else str(r["redeemed_revenue"])} for r in rows]


class CampaignRefusal(ApiError):
    """A campaign change that is refused (the API answers it with its status and the field)."""


def _campaign_document(row: dict[str, Any]) -> dict[str, Any]:
    return {"campaign_id": row["campaign_id"], "status": row["status"], "sent": int(row["sent"]),
            "definition": row["definition"], "created_at": row["created_at"], "updated_at": row["updated_at"]}

