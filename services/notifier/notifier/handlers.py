"""One function per event kind: load → domain → save → emit, inside the consumer's transaction."""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections import Counter as Tally
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from crm_shared.events import (
    AssociationRulesChanged,
    Envelope,
    MemberErased,
    MemberProfileUpdated,
    MemberSegmentChanged,
    Sale,
    TierChanged,
)
from crm_shared.marketing_events import OfferIssued, OfferReason, offer_event
from crm_shared.outbox import add_events
from crm_shared.supply_events import LowStock
from crm_shared.topics import MARKETING_OFFERS
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from notifier import domain, store
from notifier.consents import ConsentBook
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
}


def default_campaign_id(trigger: str) -> str:
    return "auto-" + trigger.replace("_", "-")


def pseudonym(member_id: str) -> str:
    return "erased-" + hashlib.sha256(member_id.encode()).hexdigest()[:16]


def campaign_of(row: dict[str, Any]) -> domain.Campaign:
    return domain.Campaign(row["campaign_id"], domain.CampaignDefinition.model_validate(row["definition"]),
                           row["status"], int(row["sent"]))


def rules_of(documents: list[dict[str, Any]]) -> list[domain.Rule]:
    return [domain.Rule(frozenset(d["antecedents"]), d["consequent"], float(d["confidence"]), float(d["lift"]),
                        float(d["support"])) for d in documents]


class NotifierHandlers:
    def __init__(self, engine: AsyncEngine, settings: NotifierSettings, consents: ConsentBook, *, topic_prefix: str,
                 wake_relay: Callable[[], None]) -> None:
        self.engine = engine
        self.settings = settings
        self.consents = consents
        self.offers_topic = MARKETING_OFFERS.qualified(topic_prefix)
        self.wake_relay = wake_relay
        self.policy = settings.policy()
        self.enabled = settings.enabled_triggers
        self.rules_by_scope: dict[str, list[domain.Rule]] = {}

    async def restore(self) -> None:
        async with self.engine.begin() as conn:
            if self.settings.seed_campaigns:
                for trigger in sorted(self.enabled):
                    await store.seed_campaign(conn, default_campaign_id(trigger), DEFAULT_CAMPAIGNS[trigger])
            self.rules_by_scope = {scope: rules_of(docs) for scope, docs in (await store.load_rules(conn)).items()}

    # --- sales: redemptions, then cross-sell ----------------------------------------------------

    async def apply_sales(self, conn: AsyncConnection, events: list[Envelope[Sale]]) -> int:
        sales = sorted((e for e in events if e.payload.member_id is not None and e.payload.kind == "sale"),
                       key=lambda e: e.payload.occurred_at)
        if not sales:
            return 0
        member_ids = sorted({e.payload.member_id for e in sales if e.payload.member_id})
        # every member of the batch at once, in id order: the run-out and cross-sell passes below lock
        # subsets again (re-entrant), so no two transactions take them in crossing orders
        await store.lock_members(conn, member_ids)
        await self._redeem(conn, sales, member_ids)
        issued = 0
        if "run_out" in self.enabled:
            issued += await self._run_out(conn, sales)
        if "cross_sell" not in self.enabled:
            return issued
        campaigns = await self._running(conn, "cross_sell")
        proposals = []
        for event in sales:
            sale = event.payload
            bought = [line.sku for line in sale.lines]
            scope, rules = domain.rules_for_store(self.rules_by_scope, sale.store_id)
            for campaign in campaigns:
                rule = domain.cross_sell(bought, rules, min_confidence=campaign.definition.min_confidence,
                                         min_lift=campaign.definition.min_lift)
                if rule is None:
                    continue
                detail = (f"{' + '.join(sorted(rule.antecedents))} -> {rule.consequent} "
                          f"(confidence {rule.confidence:.2f}, lift {rule.lift:.2f}, {scope} rules)")
                proposals.append(domain.Proposal(campaign.campaign_id, sale.member_id or "", "cross_sell",
                                                 (rule.consequent,), sale.store_id, sale.occurred_at, detail,
                                                 str(event.event_id), rule=rule, rule_scope=scope))
        return issued + await self._issue(conn, proposals, {c.campaign_id: c for c in campaigns})

    async def _run_out(self, conn: AsyncConnection, sales: list[Envelope[Sale]]) -> int:
        """Keep each member's rhythm per product; remind before the predicted re-purchase, in event time."""
        pairs = sorted({(e.payload.member_id or "", line.sku) for e in sales for line in e.payload.lines})
        held = await store.load_rhythms(conn, pairs)
        rhythms: dict[tuple[str, str], domain.Rhythm] = {
            key: domain.Rhythm(int(r["purchases"]), r["first_at"], r["last_at"], r["reminded_for"]) for key, r in held.items()}
        for event in sales:
            for sku in {line.sku for line in event.payload.lines}:
                key = (event.payload.member_id or "", sku)
                rhythms[key] = domain.bought_again(rhythms.get(key), event.payload.occurred_at)
        await store.save_rhythms(conn, [
            {"member_id": m, "sku": k, "purchases": r.purchases, "first_at": r.first_at, "last_at": r.last_at,
             "due_at": r.due_at, "interval_seconds": r.mean_interval.total_seconds() if r.mean_interval else None,
             "reminded_for": r.reminded_for} for (m, k), r in rhythms.items()])
        clock = sales[-1].payload.occurred_at
        lead = timedelta(days=self.settings.run_out_lead_days)
        due = await store.due_rhythms(conn, clock, lead, self.settings.run_out_min_purchases)
        if not due:
            return 0
        campaigns = await self._running(conn, "run_out")
        proposals, reminded = [], []
        for row in due:
            rhythm = domain.Rhythm(int(row["purchases"]), row["first_at"], row["last_at"], row["reminded_for"])
            if not domain.run_out_due(rhythm, clock, lead=lead, min_purchases=self.settings.run_out_min_purchases):
                continue
            due_at = rhythm.due_at
            assert due_at is not None
            reminded.append((row["member_id"], row["sku"], due_at))
            identity = uuid.uuid5(uuid.NAMESPACE_URL, f"crm:run-out/{row['member_id']}/{row['sku']}/{due_at.isoformat()}")
            proposals.extend(domain.Proposal(
                c.campaign_id, row["member_id"], "run_out", (row["sku"],), None, clock,
                f"bought {rhythm.purchases} times, every {rhythm.mean_interval}; next due {due_at.isoformat()}"[:500],
                str(identity)) for c in campaigns)
        await store.mark_reminded(conn, reminded)
        return await self._issue(conn, proposals, {c.campaign_id: c for c in campaigns})

    async def _redeem(self, conn: AsyncConnection, sales: list[Envelope[Sale]], member_ids: list[str]) -> None:
        earliest = sales[0].payload.occurred_at
        skus = {line.sku for event in sales for line in event.payload.lines}
        open_offers = await store.open_offers(conn, member_ids, earliest, sorted(skus))
        by_member: dict[str, list[dict[str, Any]]] = {}
        for offer in open_offers:
            by_member.setdefault(offer["member_id"], []).append(offer)
        redeemed: list[tuple[str, datetime, Decimal]] = []
        for event in sales:
            sale = event.payload
            for offer in by_member.get(sale.member_id or "", []):
                if offer.get("redeemed"):
                    continue
                products = list(offer["products"])
                if domain.redeems(products, offer["issued_at"], offer["valid_to"], sale.occurred_at,
                                  (line.sku for line in sale.lines)):
                    revenue = (sum((line.net for line in sale.lines if line.sku in products), Decimal("0"))
                               if products else sale.total)
                    offer["redeemed"] = True
                    redeemed.append((offer["offer_id"], sale.occurred_at, revenue))
        await store.mark_redeemed(conn, redeemed)

    # --- member events ---------------------------------------------------------------------------

    async def apply_segments(self, conn: AsyncConnection, events: list[Envelope[MemberSegmentChanged]]) -> int:
        ordered = sorted(events, key=lambda e: e.payload.as_of)
        for event in ordered:
            change = event.payload
            await store.set_segments(conn, change.member_id, sorted(set(change.current.values())), change.as_of)
        if "dormant_wakeup" not in self.enabled:
            return 0
        campaigns = await self._running(conn, "dormant_wakeup")
        proposals = [
            domain.Proposal(c.campaign_id, e.payload.member_id, "dormant_wakeup", tuple(c.definition.products), None,
                            e.payload.as_of, f"persona {e.payload.old} -> dormant: {e.payload.reason}"[:500],
                            str(e.event_id), segment="dormant")
            for e in ordered if domain.is_dormant_transition(e.payload.dimension, e.payload.old, e.payload.new)
            for c in campaigns]
        return await self._issue(conn, proposals, {c.campaign_id: c for c in campaigns})

    async def apply_tiers(self, conn: AsyncConnection, events: list[Envelope[TierChanged]]) -> int:
        ordered = sorted(events, key=lambda e: e.payload.effective_at)
        for event in ordered:
            await store.set_tier(conn, event.payload.member_id, event.payload.new_tier, event.payload.effective_at)
        if "tier_upgrade" not in self.enabled:
            return 0
        campaigns = await self._running(conn, "tier_upgrade")
        proposals = [
            domain.Proposal(c.campaign_id, e.payload.member_id, "tier_upgrade", tuple(c.definition.products), None,
                            e.payload.effective_at, f"tier {e.payload.old_tier} -> {e.payload.new_tier}",
                            str(e.event_id), segment=e.payload.new_tier)
            for e in ordered if domain.is_upgrade(e.payload.old_tier, e.payload.new_tier) for c in campaigns]
        return await self._issue(conn, proposals, {c.campaign_id: c for c in campaigns})

    async def apply_profiles(self, conn: AsyncConnection, events: list[Envelope[MemberProfileUpdated]]) -> int:
        latest: dict[str, Envelope[MemberProfileUpdated]] = {}
        first: dict[str, Envelope[MemberProfileUpdated]] = {}
        for event in sorted(events, key=lambda e: e.payload.as_of):
            latest[event.payload.member_id] = event
            first.setdefault(event.payload.member_id, event)
        known = await store.load_members(conn, sorted(latest))
        newcomers = [e for m, e in first.items() if domain.is_first_profile(m in known, e.payload.frequency)]
        await store.upsert_members(conn, [
            {"member_id": m, "tier": e.payload.tier, "preferred_store": e.payload.preferred_store,
             "segments": [], "first_seen_at": first[m].payload.as_of}
            for m, e in latest.items() if not e.payload.erased])
        if "welcome" not in self.enabled or not newcomers:
            return 0
        campaigns = await self._running(conn, "welcome")
        proposals = [
            domain.Proposal(c.campaign_id, e.payload.member_id, "welcome", tuple(c.definition.products),
                            e.payload.preferred_store, e.payload.as_of, "first profile of a new member",
                            str(e.event_id)) for e in newcomers for c in campaigns]
        return await self._issue(conn, proposals, {c.campaign_id: c for c in campaigns})

    async def apply_erasures(self, conn: AsyncConnection, events: list[Envelope[MemberErased]]) -> None:
        for event in events:
            await store.erase(conn, event.payload.member_id, event.payload.erased_at, pseudonym(event.payload.member_id))
            self.consents.forget(event.payload.member_id)

    # --- rules and stock ---------------------------------------------------------------------------

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
                loaded = await store.load_rules(conn)
            self.rules_by_scope = {scope: rules_of(docs) for scope, docs in loaded.items()}

    async def apply_low_stock(self, conn: AsyncConnection, events: list[Envelope[LowStock]]) -> None:
        await store.save_low_stock(conn, [{"store_id": e.payload.store_id, "sku": e.payload.sku, "as_of": e.payload.as_of,
                                           "days_of_cover": e.payload.days_of_cover} for e in events])

    async def after_offers(self, issued: int) -> None:
        if issued:
            self.wake_relay()

    # --- the guards, for every trigger ------------------------------------------------------------

    async def _running(self, conn: AsyncConnection, trigger: str) -> list[domain.Campaign]:
        rows = await store.load_campaigns(conn)
        return [campaign_of(r) for r in rows if r["status"] == "running" and r["definition"]["trigger"] == trigger]

    async def _issue(self, conn: AsyncConnection, proposals: list[domain.Proposal],
                     campaigns: dict[str, domain.Campaign]) -> int:
        if not proposals:
            return 0
        proposals.sort(key=lambda p: p.at)
        member_ids = sorted({p.member_id for p in proposals})
        earliest = proposals[0].at
        await store.lock_members(conn, member_ids)  # before reading their sends: the caps hold across consumers
        members = await store.load_members(conn, member_ids)
        erased = await store.erased_among(conn, member_ids)
        history: dict[str, list[domain.PastOffer]] = {}
        for row in await store.history(conn, member_ids, earliest - timedelta(days=7)):
            history.setdefault(row["member_id"], []).append(domain.PastOffer(
                row["campaign_id"], tuple(row["products"]), row["issued_at"], row["valid_to"], row["withheld"]))
        stores = sorted({s for p in proposals for s in (p.store_id, members.get(p.member_id, {}).get("preferred_store"))
                         if s})
        low = await store.low_stock_at(conn, stores, earliest - timedelta(hours=self.settings.low_stock_hold_hours))
        consents = await self.consents.lookup([m for m in member_ids if m not in erased])
        sent_now: Tally[str] = Tally()
        suppressed: Tally[tuple[str, str]] = Tally()
        rows: list[dict[str, Any]] = []
        events: dict[str, Any] = {}
        for proposal in proposals:
            campaign = campaigns[proposal.campaign_id]
            campaign = domain.Campaign(campaign.campaign_id, campaign.definition, campaign.status,
                                       campaign.sent + sent_now[campaign.campaign_id])
            row = members.get(proposal.member_id) or {}
            facts = domain.MemberFacts(proposal.member_id, row.get("tier"), row.get("preferred_store"),
                                       frozenset(row.get("segments") or ()), proposal.member_id in erased)
            channel = campaign.definition.channel
            member_consents = consents.get(proposal.member_id)
            consent = None if member_consents is None else member_consents.get(channel, False)
            store_id = proposal.store_id or facts.preferred_store
            decision = domain.decide(proposal, campaign, facts, consent=consent,
                                     history=history.get(proposal.member_id, []),
                                     low_stock=frozenset(low.get(store_id, set()) if store_id else set()),
                                     policy=self.policy)
            OFFERS.labels(proposal.trigger, decision.reason or decision.action).inc()
            if decision.action == "suppress":
                suppressed[(proposal.campaign_id, decision.reason or "unknown")] += 1
                continue
            offer = self._offer(proposal, campaign, withheld=decision.action == "withhold")
            history.setdefault(proposal.member_id, []).append(domain.PastOffer(
                proposal.campaign_id, proposal.products, proposal.at, offer.valid_to, offer.withheld))
            rows.append({"offer_id": offer.offer_id, "campaign_id": offer.campaign_id, "member_id": offer.member_id,
                         "trigger": proposal.trigger, "channel": offer.channel, "products": list(offer.products),
                         "store_id": offer.store_id, "text": offer.text, "issued_at": offer.valid_from,
                         "valid_to": offer.valid_to, "withheld": offer.withheld})
            events[offer.offer_id] = offer_event(offer)
            if not offer.withheld:
                sent_now[campaign.campaign_id] += 1
        new_ids = await store.add_offers(conn, rows)
        await add_events(conn, store.outbox, self.offers_topic, [events[r["offer_id"]] for r in rows
                                                                if r["offer_id"] in new_ids])
        await store.count_sent(conn, dict(Tally(r["campaign_id"] for r in rows
                                               if r["offer_id"] in new_ids and not r["withheld"])))
        await store.count_suppressions(conn, dict(suppressed))
        return len(new_ids)

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
        async with self.engine.begin() as conn:
            existing = {r["campaign_id"] for r in await store.load_campaigns(conn)}
            await store.save_campaign(conn, campaign_id, definition.model_dump(mode="json"), "draft")
        found = await self.campaign(campaign_id)
        assert found is not None
        return found, campaign_id not in existing

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
                "suppressed": figures["suppressed"], "suppressed_total": sum(figures["suppressed"].values()),
                "redeemed": {"treated": treated["redeemed"], "control": control["redeemed"]},
                "members": {"treated": treated["members"], "control": control["members"]},
                "converted": {"treated": treated["converted"], "control": control["converted"]},
                "conversion": {"treated": result.treated_rate, "control": result.control_rate},
                "uplift": result.uplift, "uplift_ci95": list(result.ci95) if result.ci95 else None,
                "revenue": {"treated": str(treated["revenue"]), "control": str(control["revenue"])},
                "incremental_revenue": None if result.incremental_revenue is None else str(result.incremental_revenue)}

    async def member_offers(self, member_id: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await store.member_offers(conn, member_id)
        return [{**r, "products": list(r["products"]),
                 "redeemed_revenue": None if r["redeemed_revenue"] is None else str(r["redeemed_revenue"])} for r in rows]


def _campaign_document(row: dict[str, Any]) -> dict[str, Any]:
    return {"campaign_id": row["campaign_id"], "status": row["status"], "sent": int(row["sent"]),
            "definition": row["definition"], "created_at": row["created_at"], "updated_at": row["updated_at"]}

