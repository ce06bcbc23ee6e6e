"""One function per event batch or query: load, decide with the domain, save, emit.

Everything learned (the clusters, the churn model, the event-time clock) is snapshotted in the
same transaction as the applied event ids; the in-memory copies are swapped in only after that
transaction commits, so a failed or retried batch never teaches the model twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
from crm_shared.events import (
    AssociationRulesChanged,
    Envelope,
    MemberErased,
    MemberProfileUpdated,
    MemberSegmentChanged,
    Sale,
    segmenter_event,
)
from crm_shared.outbox import add_events
from crm_shared.topics import ANALYTICS_ASSOCIATIONS, MEMBER_SEGMENTS
from prometheus_client import Counter, Gauge
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from segmenter import domain, store
from segmenter.baskets import AssociationRule, BasketRules, TooManyItemsets, worth_mining_again
from segmenter.churn import ChurnEstimate, ChurnModel, PurchaseSummary
from segmenter.clusters import OnlineClusters
from segmenter.mining import RuleMiner
from segmenter.settings import SegmenterSettings

log = logging.getLogger(__name__)
DAY = timedelta(days=1)
SWEEP_PAGE = 5_000  # members re-decided per page of a day sweep
P_ACTIVE_STEP = 0.02  # the sweep stores P(active) again when it moved at least this much
BasketRow = tuple[str, str, datetime, list[str]]  # basket id, store, event time, SKUs
RULES_ANSWERS_KEPT = 32
MIN_POPULATION = 5  # active members needed for RFM cut points

RECLASSIFIED = Counter("crm_segmenter_reclassified_total", "Profile updates classified")
SEGMENT_CHANGES = Counter("crm_segmenter_segment_changes_total", "Segment changes published", ["dimension"])
BASKETS = Gauge("crm_segmenter_baskets_in_window", "Baskets in the chain-wide rules window")


@dataclass
class ProfilesOutcome:
    clusters: OnlineClusters | None = None
    churn: ChurnModel | None = None
    clock: datetime | None = None
    population: domain.Population | None = None
    churn_fitted_at: datetime | None = None
    published: int = 0
    reclassified: int = 0
    changes: dict[str, int] = field(default_factory=dict)


@dataclass
class Learned:
    """What a batch decided, before it is saved."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)
    events: list[Envelope[Any]] = field(default_factory=list)


def held_segments(row: dict[str, Any] | None) -> domain.MemberSegments:
    if row is None:
        return domain.MemberSegments()
    scores = row.get("scores")
    return domain.MemberSegments(row.get("value_tier"), row.get("persona"), row.get("cluster"),
                                 domain.Scores(*scores) if scores else None)


def cluster_index(label: str | None) -> int | None:
    return int(label.split("-", 1)[1]) if label and label.startswith("cluster-") else None


def summary_of_row(row: dict[str, Any], clock: datetime) -> PurchaseSummary | None:
    first, last = row.get("first_purchase_at"), row.get("last_purchase_at")
    if first is None or last is None:
        return None
    repeat = max(int(row["visits"]) - 1, 0)
    return PurchaseSummary(repeat_visits=repeat, recency_days=max((last - first) / DAY, 0.0),
                           age_days=max((clock - first) / DAY, 0.0),
                           mean_interval_days=row.get("interval_mean") if repeat >= 1 else None,
                           spread_days=row.get("interval_spread") if repeat >= 2 else None)


class SegmentHandlers:
    def __init__(self, engine: AsyncEngine, settings: SegmenterSettings, *, topic_prefix: str,
                 wake_relay: Any = None, miner: RuleMiner | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.miner = miner or RuleMiner(in_process=not settings.rules_mining_process)
        self.segments_topic = MEMBER_SEGMENTS.qualified(topic_prefix)
        self.rules_topic = ANALYTICS_ASSOCIATIONS.qualified(topic_prefix)
        self.wake_relay = wake_relay or (lambda: None)
        self.clusters = OnlineClusters(n_clusters=settings.n_clusters, algorithm=settings.cluster_algorithm)
        self.churn = ChurnModel()
        self.churn_fitted_at: datetime | None = None
        self.clock: datetime | None = None
        self.population = domain.Population()
        window = timedelta(days=settings.basket_window_days)
        self.window = window
        self.chain_rules = BasketRules(window=window)
        self.store_rules: dict[str, BasketRules] = {}
        self.rules_lock = asyncio.Lock()
        self._checked_versions: dict[str, int] = {}
        # scope -> its basket arrivals when its rules were last refused, and refusals in a row
        self._refused_at: dict[str, tuple[int, int]] = {}
        # `/v1/rules` answers by (scope, window version, the question): a window version changes with every
        # basket, so an answer is never served for another window; the least recently asked go first.
        self._answers: OrderedDict[tuple[Any, ...], tuple[list[AssociationRule], int]] = OrderedDict()

    # --- start-up ---------------------------------------------------------------------------

    async def restore(self) -> None:
        """Snapshots back into memory; the basket windows rebuilt from the baskets table."""
        async with self.engine.connect() as conn:
            clusters = await store.load_state(conn, "clusters")
            if clusters is not None:
                self.clusters = OnlineClusters.from_state(clusters)
            churn = await store.load_state(conn, "churn")
            if churn is not None:
                data = orjson.loads(churn)
                self.churn = ChurnModel.from_state(data["model"])
                self.churn_fitted_at = datetime.fromisoformat(data["fitted_at"]) if data.get("fitted_at") else None
            self.clock = await store.load_clock(conn)
            population = await store.load_state(conn, "population")  # as the last review (or update) left it
            if population is not None:
                self.population = domain.population_from_state(orjson.loads(population))
            rows = await store.baskets_since(conn, None)
        async with self.rules_lock:
            await asyncio.to_thread(self._add_baskets, rows)
        log.info("segmenter state restored", extra={"clock": self.clock and self.clock.isoformat(),
                                                     "learned": self.clusters.learned, "baskets": len(rows)})

    # --- member.profiles.v1 -------------------------------------------------------------------

    async def apply_profiles(self, conn: AsyncConnection, events: list[Envelope[MemberProfileUpdated]]) -> ProfilesOutcome:
        """Every profile update classified in topic order, at the event-time clock it brings (the
        running latest `as_of`); when that clock passes a review midnight (`review_every_days`),
        everyone is reviewed at that midnight first (`_sweep`). So what is decided depends on the
        updates and their order only, never on where a consumer batch starts or ends."""
        # Erasures and profile batches take turns: an erasure committing mid-batch could otherwise
        # be undone by this batch's upsert (or its day sweep).
        await store.lock_members(conn)
        erased = await store.erased_among(conn, sorted({e.payload.member_id for e in events}))
        outcome = ProfilesOutcome(clusters=self.clusters.copy(), churn=self.churn, clock=self.clock,
                                  population=self.population, churn_fitted_at=self.churn_fitted_at)
        learned = Learned()
        run: list[tuple[Envelope[MemberProfileUpdated], datetime]] = []
        new_day = False
        timings = {"start": time.perf_counter(), "classified": 0.0, "swept": 0.0}
        for event in events:
            profile = event.payload
            clock = outcome.clock
            review = domain.review_due(clock, profile.as_of, self.settings.review_every_days)
            if review is not None:
                await self._classify_run(conn, run, outcome, learned, timings)
                run = []
                started = time.perf_counter()
                await self._sweep(conn, review, learned, outcome)
                timings["swept"] += time.perf_counter() - started
            new_day = new_day or (clock is not None and profile.as_of.astimezone(UTC).date() > clock.astimezone(UTC).date())
            outcome.clock = clock = profile.as_of if clock is None else max(clock, profile.as_of)
            if profile.member_id in erased or profile.erased:
                await self._classify_run(conn, run, outcome, learned, timings)
                run = []
                erased.add(profile.member_id)
                if profile.erased:
                    await store.erase(conn, profile.member_id, profile.as_of)
            elif profile.first_purchase_at is not None:  # returns only, no purchase yet: nothing to segment
                if outcome.population is None or outcome.population.members < MIN_POPULATION:
                    # Too few members for cut points (the stream's start, or a review that found too few):
                    # the population is counted again before each update until there are enough.
                    await self._classify_run(conn, run, outcome, learned, timings)
                    run = []
                    outcome.population = domain.population_of(
                        await store.active_population(conn, self.settings.active_days, clock))
                    if outcome.population.members >= MIN_POPULATION:  # enough at last: score who came before
                        await self._sweep(conn, clock, learned, outcome, label=f"populated/{event.event_id}")
                run.append((event, clock))
        await self._classify_run(conn, run, outcome, learned, timings)
        if new_day and outcome.clock is not None:  # sizes for the trend, as the batch leaves them on its last day
            await store.record_sizes(conn, outcome.clock.astimezone(UTC).date(), self._segment_names())
        if outcome.population is not None and outcome.population is not self.population:
            await store.save_state(conn, "population", orjson.dumps(dataclasses.asdict(outcome.population)))
        await store.record_changes(conn, learned.changes)
        await add_events(conn, store.outbox, self.segments_topic, learned.events)
        if outcome.clusters is not None:
            await store.save_state(conn, "clusters", outcome.clusters.to_state())
        if outcome.clock is not None:
            await store.save_clock(conn, outcome.clock)
        log.debug("profiles batch", extra={"profiles": len(events), "changes": len(learned.changes),
                                            "classify_ms": round(timings["classified"] * 1000, 1),
                                            "sweeps_ms": round(timings["swept"] * 1000, 1),
                                            "total_ms": round((time.perf_counter() - timings["start"]) * 1000, 1)})
        outcome.published = len(learned.events)
        for change in learned.changes:
            outcome.changes[change["dimension"]] = outcome.changes.get(change["dimension"], 0) + 1
        return outcome

    async def _classify_run(self, conn: AsyncConnection, run: list[tuple[Envelope[MemberProfileUpdated], datetime]],
                            outcome: ProfilesOutcome, learned: Learned, timings: dict[str, float]) -> None:
        """Classify the updates since the last review (each at its own clock) and save them before a review reads them."""
        if not run:
            return
        started = time.perf_counter()
        existing = await store.load_members(conn, sorted({event.payload.member_id for event, _ in run}))
        assert outcome.clusters is not None and outcome.population is not None
        decided = await asyncio.to_thread(self._classify_profiles, outcome.clusters, run, existing,
                                          outcome.population, outcome.churn or self.churn)
        await store.save_members(conn, list({row["member_id"]: row for row in decided.rows}.values()))
        learned.changes += decided.changes
        learned.events += decided.events
        outcome.reclassified += len(run)
        timings["classified"] += time.perf_counter() - started

    async def after_profiles(self, outcome: ProfilesOutcome) -> None:
        if outcome.clusters is not None:
            self.clusters = outcome.clusters
        if outcome.churn is not None:
            self.churn = outcome.churn
        if outcome.clock is not None:
            self.clock = outcome.clock
        if outcome.population is not None:
            self.population = outcome.population
        if outcome.churn_fitted_at is not None:
            self.churn_fitted_at = outcome.churn_fitted_at
        RECLASSIFIED.inc(outcome.reclassified)
        for dimension, count in outcome.changes.items():
            SEGMENT_CHANGES.labels(dimension).inc(count)
        if outcome.published:
            self.wake_relay()

    def _classify_profiles(self, model: OnlineClusters, run: list[tuple[Envelope[MemberProfileUpdated], datetime]],
                           existing: dict[str, dict[str, Any]], population: domain.Population,
                           churn_model: ChurnModel) -> Learned:
        """`existing` is updated as it goes: a member's second update in a run sees what the first decided."""
        learned = Learned()
        for event, clock in run:
            profile = event.payload
            row = existing.get(profile.member_id)
            held = held_segments(row)
            feats = domain.features(profile)
            distances = model.learn_one(feats)
            cluster = (domain.sticky_cluster(distances, cluster_index(held.cluster), margin=self.settings.cluster_margin)
                       if distances else None)
            summary = domain.purchase_summary(profile, clock)
            churn = churn_model.estimate(summary, self.settings.churn_horizon_days) if summary else None
            visited_since = row is None or row.get("last_purchase_at") != profile.last_purchase_at
            facts = domain.persona_facts(profile, feats, clock, churn, held=held.persona, visited_since=visited_since)
            last = profile.last_purchase_at
            recency = (clock - last) / DAY if last else float(self.settings.active_days)
            visits = profile.visit_rhythm.intervals + 1 if profile.first_purchase_at else 0
            decided = domain.classify(current=held, recency_days=recency, visits=visits, monetary=float(profile.monetary),
                                      facts=facts, population=population, cluster=cluster, churn=churn,
                                      band=self.settings.score_band)
            new_row = {
                "member_id": profile.member_id, "as_of": profile.as_of, "first_purchase_at": profile.first_purchase_at,
                "last_purchase_at": last, "visits": visits, "monetary": float(profile.monetary),
                "basket_value": float(profile.average_basket_value), "basket_size": profile.average_basket_size,
                "interval_mean": profile.visit_rhythm.mean_days if profile.visit_rhythm.intervals >= 1 else None,
                "interval_spread": profile.visit_rhythm.spread_days if profile.visit_rhythm.intervals >= 2 else None,
                "features": feats, "facts": facts_document(facts), "profile_event_id": event.event_id,
            }
            new_row.update(self._segment_columns(decided.segments, churn, clock))
            learned.rows.append(new_row)
            existing[profile.member_id] = new_row
            self._record(learned, profile.member_id, decided, churn, clock, identity=str(event.event_id))
        return learned

    @staticmethod
    def _segment_columns(segments: domain.MemberSegments, churn: ChurnEstimate | None, clock: datetime) -> dict[str, Any]:
        scores = segments.scores
        return {
            "value_tier": segments.value_tier, "persona": segments.persona, "cluster": segments.cluster,
            "scores": [scores.recency, scores.frequency, scores.monetary] if scores else None,
            "p_active": churn.p_active if churn else None,
            "expected_next_visit_at": (clock + timedelta(days=churn.expected_next_visit_days)
                                       if churn and churn.expected_next_visit_days is not None else None),
        }

    def _record(self, learned: Learned, member_id: str, decided: domain.Classified, churn: ChurnEstimate | None,
                clock: datetime, *, identity: str) -> None:
        current = decided.segments.as_dict()
        next_visit = (clock + timedelta(days=churn.expected_next_visit_days)
                      if churn and churn.expected_next_visit_days is not None else None)
        for change in decided.changes:
            learned.changes.append({"member_id": member_id, "dimension": change.dimension, "old": change.old,
                                    "new": change.new, "reason": change.reason, "as_of": clock})
            # Built from validated inputs by the rules above: assembled without validating again
            # (~75 us an event, most of a reclassification); tests validate what comes out.
            payload = MemberSegmentChanged.model_construct(
                member_id=member_id, dimension=change.dimension, old=change.old, new=change.new,
                reason=change.reason[:500], as_of=clock, current=current, p_active=churn.p_active if churn else None,
                expected_next_visit_at=next_visit)
            learned.events.append(segmenter_event(payload, event_type="MemberSegmentChanged", key=member_id,
                                                  occurred_at=clock, trusted=True,
                                                  identity=f"segment/{member_id}/{change.dimension}/{identity}"))

    async def _sweep(self, conn: AsyncConnection, clock: datetime, learned: Learned, outcome: ProfilesOutcome,
                     label: str | None = None) -> None:
        """Event time passed a review midnight: refit what is due, re-decide everyone (recency moved for
        members who bought nothing: some become dormant, some slip a value tier).
        Members are read in keyset pages (this batch's members were saved just before), so the sweep
        holds one page at a time, whatever the number of members."""
        churn = outcome.churn or self.churn
        fitted_at = outcome.churn_fitted_at
        if fitted_at is None or clock - fitted_at >= timedelta(days=self.settings.churn_refit_days):
            summaries = [summary for page in [p async for p in store.member_pages(conn, SWEEP_PAGE, store.SUMMARY_COLUMNS)]
                         for summary in (summary_of_row(r, clock) for r in page) if summary is not None]
            if len(summaries) >= 50:
                churn = ChurnModel.from_state(churn.to_state())
                await asyncio.to_thread(churn.fit, summaries)
                outcome.churn_fitted_at = clock
                await store.save_state(conn, "churn", orjson.dumps({"model": churn.to_state(),
                                                                   "fitted_at": clock.isoformat()}))
                outcome.churn = churn
        population = domain.population_of(await store.active_population(conn, self.settings.active_days, clock))
        outcome.population = population
        model = outcome.clusters or self.clusters
        async for page in store.member_pages(conn, SWEEP_PAGE, store.REVIEW_COLUMNS):
            swept = await asyncio.to_thread(self._reclassify_rows, page, population, churn, clock, model,
                                            label or f"sweep/{clock.date().isoformat()}")
            await store.save_segments(conn, swept.rows)
            learned.changes += swept.changes
            learned.events += swept.events

    def _segment_names(self) -> dict[str, Any]:
        return {"value_tier": domain.VALUE_TIERS, "persona": domain.PERSONAS,
                "cluster": [domain.cluster_name(c) for c in range(self.settings.n_clusters)]}

    def _reclassify_rows(self, rows: list[dict[str, Any]], population: domain.Population, churn_model: ChurnModel,
                         clock: datetime, model: OnlineClusters, label: str) -> Learned:
        learned = Learned()
        for row in rows:
            summary = summary_of_row(row, clock)
            churn = churn_model.estimate(summary, self.settings.churn_horizon_days) if summary else None
            held = held_segments(row)
            facts = facts_from_document(row["facts"], churn, row, clock)
            last = row.get("last_purchase_at")
            recency = (clock - last) / DAY if last else float(self.settings.active_days)
            cluster = cluster_index(held.cluster)
            if cluster is None:  # first seen while the clusters were still being seeded
                cluster = model.predict_one(row["features"])
            decided = domain.classify(current=held, recency_days=recency, visits=int(row["visits"]),
                                      monetary=float(row["monetary"]), facts=facts, population=population,
                                      cluster=cluster, churn=churn, band=self.settings.score_band)
            columns = self._segment_columns(decided.segments, churn, clock)
            held_p = row.get("p_active")
            new_p = columns["p_active"]
            moved = (held_p is None) != (new_p is None) or (
                held_p is not None and new_p is not None and abs(held_p - new_p) >= P_ACTIVE_STEP)
            if decided.changes or moved:  # a day's drift of P(active) alone is not worth a write per member
                learned.rows.append({"member_id": row["member_id"], **columns})
            self._record(learned, row["member_id"], decided, churn, clock, identity=label)
        return learned

    # --- member.erased.v1 ------------------------------------------------------------------------

    async def apply_erasures(self, conn: AsyncConnection, events: list[Envelope[MemberErased]]) -> None:
        await store.lock_members(conn)
        for event in events:
            await store.erase(conn, event.payload.member_id, event.payload.erased_at)

    # --- pos.sales.v1: baskets and product sales ------------------------------------------------

    async def apply_sales(self, conn: AsyncConnection, events: list[Envelope[Sale]]) -> list[BasketRow]:
        baskets: list[BasketRow] = []
        daily: dict[tuple[str, str, date], list[Any]] = defaultdict(lambda: [0, Decimal(0), 0])
        names: dict[str, str] = {}
        for event in events:
            sale = event.payload
            sign = -1 if sale.kind == "return" else 1
            day = sale.occurred_at.date()  # the till's calendar day
            seen: set[str] = set()
            for line in sale.lines:
                entry = daily[(sale.store_id, line.sku, day)]
                entry[0] += sign * line.quantity
                entry[1] += sign * line.net
                if line.sku not in seen and sign > 0:
                    entry[2] += 1
                seen.add(line.sku)
                if line.description and line.sku not in names:
                    names[line.sku] = line.description
            if sale.kind == "sale":
                baskets.append((str(event.event_id), sale.store_id, sale.occurred_at, sorted(seen)))
        await store.add_baskets(conn, [{"basket_id": b, "store_id": s, "at": at, "items": items}
                                       for b, s, at, items in baskets])
        await store.add_product_sales(conn, [(s, k, d, q, r, n) for (s, k, d), (q, r, n) in daily.items()])
        await store.name_products(conn, names)
        return baskets

    async def after_sales(self, baskets: list[BasketRow]) -> None:
        if baskets:
            async with self.rules_lock:
                self._add_baskets(baskets)

    def _add_baskets(self, rows: list[BasketRow]) -> None:
        for basket_id, store_id, at, items in rows:
            self.chain_rules.add(basket_id, items, at)
            rules = self.store_rules.get(store_id)
            if rules is None:
                rules = self.store_rules[store_id] = BasketRules(window=self.window)
            rules.add(basket_id, items, at)
        latest = self.chain_rules.latest_at
        if latest is not None:  # a store that stopped selling leaves the window on the chain's clock
            for store_id, rules in list(self.store_rules.items()):
                rules.expire_before(latest - self.window)
                if not len(rules):  # what is kept by window version goes too: a new window counts from 0 again
                    del self.store_rules[store_id]
                    self._refused_at.pop(store_id, None)
                    self._checked_versions.pop(store_id, None)
                    for asked in [asked for asked in self._answers if asked[0] == store_id]:
                        del self._answers[asked]
        BASKETS.set(len(self.chain_rules))

    def rules_for(self, scope: str | None) -> BasketRules | None:
        return self.chain_rules if scope in (None, "chain") else self.store_rules.get(scope)

    async def rules(self, *, scope: str | None, min_support: float, min_confidence: float, min_lift: float,
                    antecedent: frozenset[str] | None, limit: int | None,
                    max_items: int | None = None) -> tuple[list[AssociationRule], int]:
        async with self.rules_lock:
            rules = self.rules_for(scope)
            if rules is None:
                return [], 0
            refused = rules.known_refusal(min_support, max_items)
            if refused is not None:
                raise refused
            asked = (scope or "chain", rules.version, min_support, min_confidence, min_lift, antecedent, limit, max_items)
            answered = self._answers.get(asked)
            if answered is not None:  # the same question of the same window: no basket came or went since
                self._answers.move_to_end(asked)
                return answered
            baskets, version = rules.item_lists(), rules.version
        try:
            found = await self.miner.rules(baskets, min_support, min_confidence, min_lift, antecedent, limit, max_items,
                                           max_rule_items=rules.max_rule_items, max_itemsets=rules.max_itemsets)
        except TooManyItemsets as exc:
            rules.remember_refusal(version, exc, max_items)
            raise
        self._answers[asked] = (found, len(baskets))
        while len(self._answers) > RULES_ANSWERS_KEPT:
            self._answers.popitem(last=False)
        return found, len(baskets)

    async def bought_with(self, sku: str, scope: str | None, limit: int) -> tuple[list[Any], int]:
        async with self.rules_lock:
            rules = self.rules_for(scope)
            if rules is None:
                return [], 0
            return rules.bought_with(sku, limit), rules.baskets_with(sku)

    async def publish_rules_if_changed(self) -> int:
        """Publish each scope's top rules when they differ from what was last published."""
        published = 0
        async with self.engine.connect() as conn:
            fingerprints = await store.last_fingerprints(conn)
        scopes = ["chain", *sorted(self.store_rules)]
        for scope in scopes:
            async with self.rules_lock:
                rules = self.rules_for(scope)
                if rules is None or len(rules) < self.settings.rules_min_scope_baskets:
                    continue
                if self._checked_versions.get(scope) == rules.version:
                    continue  # no basket came or went since the last look
                refused_at, refusals = self._refused_at.get(scope, (None, 0))
                if not worth_mining_again(rules, refused_at, refusals):
                    continue
                self._checked_versions[scope] = rules.version
                baskets, arrivals, latest, version = rules.item_lists(), rules.arrivals, rules.latest_at, rules.version
            try:  # in the mining process (segmenter.mining), outside the lock: sales go on being counted
                top = await self.miner.rules(baskets, self.settings.rules_min_support,
                                             self.settings.rules_min_confidence, 0.0, None, self.settings.rules_top,
                                             self.settings.rules_publish_max_items, max_rule_items=rules.max_rule_items,
                                             max_itemsets=rules.max_itemsets)
            except TooManyItemsets as exc:
                self._refused_at[scope] = (arrivals, refusals + 1)
                rules.remember_refusal(version, exc, self.settings.rules_publish_max_items)
                log.info("rules of a scope skipped", extra={"scope": scope, "reason": str(exc)})
                continue
            self._refused_at.pop(scope, None)
            size = len(baskets)
            fingerprint = hashlib.sha256(orjson.dumps([[sorted(r.antecedents), r.consequent] for r in top])).hexdigest()
            if fingerprints.get(scope) == fingerprint or latest is None:
                continue
            payload = AssociationRulesChanged(
                scope=scope, window_start=latest - self.window, window_end=latest, baskets=size,
                min_support=self.settings.rules_min_support, min_confidence=self.settings.rules_min_confidence,
                rules=[r.document() for r in top])
            # the window's end too: top rules that come back to an earlier set are a new fact
            event = segmenter_event(payload, event_type="AssociationRulesChanged", key=scope, occurred_at=latest,
                                    identity=f"rules/{scope}/{fingerprint}/{latest.isoformat()}")
            async with self.engine.begin() as conn:
                await add_events(conn, store.outbox, self.rules_topic, [event])
                await store.save_fingerprint(conn, scope, fingerprint)
            published += 1
        if published:
            self.wake_relay()
        return published

    async def trim_baskets(self) -> int:
        latest = self.chain_rules.latest_at
        if latest is None:
            return 0
        async with self.engine.begin() as conn:
            return await store.drop_baskets_before(conn, latest - self.window)


def facts_document(facts: domain.PersonaFacts) -> dict[str, Any]:
    return {"first_days": facts.days_since_first, "discount_share": facts.discount_share,
            "top_brand_share": facts.top_brand_share, "weekend_share": facts.weekend_share}


def facts_from_document(doc: dict[str, Any], churn: ChurnEstimate | None, row: dict[str, Any],
                        clock: datetime) -> domain.PersonaFacts:
    first = row.get("first_purchase_at")
    return domain.PersonaFacts(
        dormant=domain.is_dormant(churn, held=row.get("persona"), visited_since=False),
        days_since_first=(clock - first) / DAY if first else 0.0,
        visits=int(row["visits"]), discount_share=float(doc.get("discount_share", 0.0)),
        top_brand_share=float(doc.get("top_brand_share", 0.0)), basket_size=float(row["basket_size"]),
        basket_value=float(row["basket_value"]), interval_days=row.get("interval_mean"),
        weekend_share=float(doc.get("weekend_share", 0.0)))
