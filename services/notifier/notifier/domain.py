"""The notifier's decisions, pure: which offer a trigger calls for, whether a guard stops it, who is in
the control group, and what a campaign's report says. No I/O, no clock: every time is an argument."""

from __future__ import annotations

import bisect
import hashlib
import hmac
import math
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Annotated, Literal, TypeVar
from zoneinfo import ZoneInfo

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator

OfferChannel = Literal["email", "sms", "push"]
TriggerKind = Literal["cross_sell", "dormant_wakeup", "tier_upgrade", "welcome", "run_out", "birthday", "after_sale",
                      "new_arrival"]
TRIGGERS: tuple[TriggerKind, ...] = ("cross_sell", "dormant_wakeup", "tier_upgrade", "welcome", "run_out", "birthday",
                                     "after_sale", "new_arrival")
DEFAULT_TRIGGERS: tuple[TriggerKind, ...] = ("cross_sell", "dormant_wakeup", "tier_upgrade", "welcome", "birthday",
                                             "new_arrival")
# Settings a running (or stopped) campaign keeps: changing them would move members between arms or
# change what was measured mid-flight. A new campaign id is a new experiment.
FROZEN_ONCE_STARTED = ("trigger", "control_share", "channel")
CampaignStatus = Literal["draft", "running", "stopped"]
TIER_RANK = {"member": 0, "silver": 1, "gold": 2, "vip": 3}
K = TypeVar("K")
PLACEHOLDERS = frozenset({"member_id", "product", "products", "discount", "valid_to", "store"})

# Why an offer was not sent; every one is counted per campaign.
SuppressionReason = Literal["erased", "not_running", "outside_schedule", "not_targeted", "budget_exhausted", "duplicate",
                            "low_stock", "no_consent", "quiet_hours", "daily_cap", "weekly_cap"]

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=120, pattern=r"^[^\x00-\x1f\x7f]*$")]
Label = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:\-]+$")]
CategoryName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=120,
                                                pattern=r"^[^\x00-\x1f\x7f]*$")]


class CampaignDefinition(BaseModel):
    """What a marketer writes: which trigger, whom, through which channel, with which offer."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Name
    trigger: TriggerKind
    channel: OfferChannel
    template: Annotated[str, StringConstraints(min_length=1, max_length=500, pattern=r"^[^\x00-\x1f\x7f]*$")] = Field(
        description="Message text; placeholders: " + ", ".join("{" + p + "}" for p in sorted(PLACEHOLDERS)))
    discount_percent: Decimal = Field(default=Decimal("10"), ge=0, le=90, decimal_places=4)
    products: list[Label] = Field(default_factory=list, max_length=50,
                                  description="Offered SKUs for non-cross-sell triggers; empty = any purchase")
    validity_days: int = Field(default=7, ge=1, le=90)
    control_share: float = Field(default=0.1, ge=0, le=0.5, description="Share of members withheld for measurement")
    budget: int | None = Field(default=None, ge=1, le=100_000_000, description="Most offers sent (withheld not counted)")
    segments: list[Label] = Field(default_factory=list, max_length=50,
                                  description="Any of these value tiers, personas or clusters; empty = everyone")
    tiers: list[Literal["member", "silver", "gold", "vip"]] = Field(default_factory=list)
    stores: list[Label] = Field(default_factory=list, max_length=500)
    starts_at: AwareDatetime | None = Field(default=None, description="Event time from which it may issue offers")
    ends_at: AwareDatetime | None = None
    min_confidence: float = Field(default=0.0, ge=0, le=1, description="Cross-sell: weakest rule confidence used")
    min_lift: float = Field(default=1.0, ge=0, le=1e6, description="Cross-sell: weakest rule lift used")
    categories: list[CategoryName] = Field(default_factory=list, max_length=100, validate_default=True,
                                           description="after_sale: purchases of these catalog categories are followed "
                                                       "up (required); new_arrival: only new products of these "
                                                       "categories (empty = any)")
    delay_days: int = Field(default=3, ge=0, le=90, description="after_sale: days of event time after the purchase")
    chooser: Literal["strongest_rule", "learned"] = Field(
        default="strongest_rule", description="cross_sell: offer the strongest matching rule's product, or let the "
                                              "online model choose among the `candidates` strongest by who redeems what")
    candidates: int = Field(default=3, ge=1, le=20, description="cross_sell with the learned chooser: rules considered")

    @field_validator("categories")
    @classmethod
    def _after_sale_needs_categories(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if info.data.get("trigger") == "after_sale" and not value:
            raise ValueError("an after_sale campaign names the categories whose purchases it follows up")
        return value

    @field_validator("template")
    @classmethod
    def _known_placeholders(cls, value: str) -> str:
        try:
            parsed = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(value)
                      if name is not None]
        except ValueError as exc:
            raise ValueError(f"is not a valid template: {exc}") from exc
        for name, spec, conversion in parsed:
            if spec or conversion:  # "{discount:.1f}" fails on the string it gets; "{product:>1500}" overflows the text
                raise ValueError(f"placeholder {{{name}}} takes no format spec or conversion")
        fields = [name for name, _, _ in parsed]
        unknown = sorted({f for f in fields if f not in PLACEHOLDERS})
        if unknown:
            raise ValueError(f"unknown placeholder {{{unknown[0]}}}; use one of {sorted(PLACEHOLDERS)}")
        return value

    @field_validator("ends_at")
    @classmethod
    def _ends_after_start(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        starts = info.data.get("starts_at")
        if value is not None and starts is not None and value <= starts:
            raise ValueError("must be after starts_at")
        return value


@dataclass(frozen=True)
class Campaign:
    campaign_id: str
    definition: CampaignDefinition
    status: CampaignStatus
    sent: int = 0  # offers sent so far, for the budget


@dataclass(frozen=True)
class Policy:
    """Guards that hold across every campaign."""

    daily_cap: int = 2
    weekly_cap: int = 5
    quiet_start_hour: int = 21  # local hour at which quiet hours begin
    quiet_end_hour: int = 8  # local hour at which they end
    # "defer": an offer triggered in quiet hours goes out when they end (dated then); "suppress": it is dropped
    quiet_hours: Literal["defer", "suppress"] = "defer"
    default_time_zone: str = "UTC"
    store_time_zones: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Rule:
    antecedents: frozenset[str]
    consequent: str
    confidence: float
    lift: float
    support: float


@dataclass(frozen=True)
class MemberFacts:
    """What the notifier knows about a member when a trigger fires."""

    member_id: str
    tier: str | None = None
    preferred_store: str | None = None
    segments: frozenset[str] = frozenset()
    erased: bool = False


@dataclass(frozen=True)
class PastOffer:
    campaign_id: str
    products: tuple[str, ...]
    issued_at: datetime
    valid_to: datetime
    withheld: bool


@dataclass(frozen=True)
class Proposal:
    """A trigger's suggestion, before the guards."""

    campaign_id: str
    member_id: str
    trigger: TriggerKind
    products: tuple[str, ...]
    store_id: str | None
    at: datetime
    detail: str
    source_event_id: str
    rule: Rule | None = None
    rule_scope: str | None = None
    segment: str | None = None
    features: dict[str, float] | None = None  # what the learned chooser saw, when it chose

    @property
    def offer_id(self) -> str:
        """Same trigger, same campaign, same member, same products → same offer id (redelivery-safe)."""
        identity = f"{self.campaign_id}/{self.member_id}/{self.source_event_id}/{','.join(self.products)}"
        return "of-" + hashlib.sha256(identity.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Decision:
    action: Literal["send", "withhold", "suppress"]
    reason: SuppressionReason | None = None


# --- triggers ---------------------------------------------------------------------------------

def cross_sell(bought: Iterable[str], rules: Sequence[Rule], *, min_confidence: float = 0.0,
               min_lift: float = 1.0) -> Rule | None:
    """The strongest rule whose antecedents were all bought and whose consequent was not."""
    basket = set(bought)
    best: Rule | None = None
    for rule in rules:
        if rule.consequent in basket or not rule.antecedents <= basket:
            continue
        if rule.confidence < min_confidence or rule.lift < min_lift:
            continue
        if best is None or (rule.confidence, rule.lift, len(rule.antecedents)) > (best.confidence, best.lift,
                                                                                   len(best.antecedents)):
            best = rule
    return best


def cross_sell_candidates(bought: Iterable[str], rules: Sequence[Rule], *, min_confidence: float = 0.0,
                          min_lift: float = 1.0, limit: int = 3) -> list[Rule]:
    """The strongest matching rules with distinct consequents, strongest first (the chooser's options)."""
    basket = set(bought)
    matching = sorted((r for r in rules if r.consequent not in basket and r.antecedents <= basket
                       and r.confidence >= min_confidence and r.lift >= min_lift),
                      key=lambda r: (-r.confidence, -r.lift, -len(r.antecedents), r.consequent))
    out: list[Rule] = []
    for rule in matching:
        if all(rule.consequent != taken.consequent for taken in out):
            out.append(rule)
        if len(out) == limit:
            break
    return out


def chooser_features(member: MemberFacts, categories: Iterable[str]) -> dict[str, float]:
    """What the learned chooser knows of a member: tier, segments, top categories (one-hot)."""
    x = {"tier": float(TIER_RANK.get(member.tier or "member", 0))}
    x.update({f"segment:{s}": 1.0 for s in member.segments})
    x.update({f"category:{c}": 1.0 for c in categories})
    return x


def rules_for_store(rules_by_scope: Mapping[str, Sequence[Rule]], store_id: str | None) -> tuple[str, Sequence[Rule]]:
    """A store's own rules when it has them, else the chain's."""
    if store_id is not None and rules_by_scope.get(store_id):
        return store_id, rules_by_scope[store_id]
    return "chain", rules_by_scope.get("chain", ())


def is_dormant_transition(dimension: str, old: str | None, new: str | None) -> bool:
    return dimension == "persona" and new == "dormant" and old != "dormant"


def is_upgrade(old_tier: str, new_tier: str) -> bool:
    return TIER_RANK.get(new_tier, 0) > TIER_RANK.get(old_tier, 0)


def is_first_profile(already_known: bool, frequency: int) -> bool:
    """Welcome once: the first profile of a member with at most one visit (a late start of the notifier
    on a compacted topic sees old members' latest profiles, which must not be welcomed)."""
    return not already_known and frequency <= 1


@dataclass(frozen=True)
class Rhythm:
    """How regularly a member buys one product: purchase occasions (a day apart at least) and their mean gap."""

    purchases: int
    first_at: datetime
    last_at: datetime
    reminded_for: datetime | None = None  # the due time a reminder was already made for

    @property
    def mean_interval(self) -> timedelta | None:
        return (self.last_at - self.first_at) / (self.purchases - 1) if self.purchases > 1 else None

    @property
    def due_at(self) -> datetime | None:
        interval = self.mean_interval
        return None if interval is None else self.last_at + interval


def bought_again(rhythm: Rhythm | None, at: datetime) -> Rhythm:
    """Another purchase of the product; a purchase within a day of the last is the same occasion, and one
    older than the last (a late event) only stretches the span."""
    if rhythm is None:
        return Rhythm(1, at, at)
    if rhythm.first_at <= at <= rhythm.last_at or abs(at - rhythm.last_at) < timedelta(days=1):
        return rhythm
    if at < rhythm.first_at:
        return Rhythm(rhythm.purchases + 1, at, rhythm.last_at, rhythm.reminded_for)
    return Rhythm(rhythm.purchases + 1, rhythm.first_at, at, rhythm.reminded_for)


def run_out_due(rhythm: Rhythm, clock: datetime, *, lead: timedelta, min_purchases: int) -> bool:
    """Remind `lead` before the predicted re-purchase of a product bought regularly, once per due time,
    and not once the predicted day is long past (a member who stopped buying it is not chased)."""
    due = rhythm.due_at
    interval = rhythm.mean_interval
    if due is None or interval is None or rhythm.purchases < min_purchases or rhythm.reminded_for == due:
        return False
    return due - lead <= clock < due + interval / 2


def walk_rhythms(rhythms: Mapping[K, Rhythm], bought: Mapping[K, Sequence[int]], times: Sequence[datetime],
                 steps: Sequence[datetime], *, lead: timedelta,
                 min_purchases: int) -> tuple[dict[K, Rhythm], list[tuple[K, datetime, datetime, Rhythm]]]:
    """A batch's run-out decisions, event by event: `times[i]` is event i's own time and `steps[i]`
    the clock after it (`clock_steps`); `bought[key]` the events (ascending) that bought the key's
    product. At each event the purchases it holds update their rhythms first, then every rhythm whose
    reminder window holds the clock is reminded, at that clock. Returns every rhythm as it ends and
    the reminders (key, the due time reminded for, when, the rhythm then), so where a batch is cut
    changes nothing."""
    out: dict[K, Rhythm] = {}
    reminders: list[tuple[K, datetime, datetime, Rhythm]] = []
    for key in rhythms.keys() | bought.keys():
        rhythm = rhythms.get(key)
        start = 0
        for index in [*bought.get(key, ()), len(steps)]:
            due = rhythm.due_at if rhythm is not None else None
            if rhythm is not None and due is not None and start < index:  # the clock through [start, index)
                first = bisect.bisect_left(steps, due - lead, start, index)  # the first reading in its window
                if first < index and run_out_due(rhythm, steps[first], lead=lead, min_purchases=min_purchases):
                    rhythm = replace(rhythm, reminded_for=due)
                    reminders.append((key, due, steps[first], rhythm))
            if index < len(steps):
                rhythm = bought_again(rhythm, times[index])
                start = index
        if rhythm is not None:
            out[key] = rhythm
    return out, reminders


def clock_steps(times: Iterable[datetime], start: datetime | None = None) -> list[datetime]:
    """The event-time clock after each event of a batch, in topic order: the latest time so far,
    counting from where earlier batches left it (`start`), so that an event later than a follow-up's
    delay reads the same clock whether it opens a batch or sits in the middle of one."""
    steps: list[datetime] = []
    latest = start
    for at in times:
        latest = at if latest is None or at > latest else latest
        steps.append(latest)
    return steps


def first_reaching(steps: Sequence[datetime], at: datetime) -> datetime:
    """The clock reading at which a batch's clock first reached `at` (its first, when it was already
    past): a follow-up due at `at` is made then, as it would be one event at a time."""
    return steps[min(bisect.bisect_left(steps, at), len(steps) - 1)]


def days_entered_by(previous: datetime | None, steps: Sequence[datetime], zone: tzinfo, *,
                    most: int = 7) -> list[tuple[date, datetime]]:
    """Each calendar day (in `zone`) the clock entered during a batch, with the reading that entered
    it, reading by reading from where the clock stood before (`previous`; see `days_entered`)."""
    entered: list[tuple[date, datetime]] = []
    before = None if previous is None else previous.astimezone(zone).date()
    for at in steps:
        today = at.astimezone(zone).date()
        if before is None or today > before:
            entered += [(day, at) for day in days_entered(before, today, most=most)]
            before = today
    return entered


# --- guards -----------------------------------------------------------------------------------

def in_control_group(member_id: str, campaign_id: str, share: float) -> bool:
    """Deterministic: the same member is always on the same side of the same campaign."""
    digest = hashlib.sha256(f"{campaign_id}/{member_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def local_time(at: datetime, store_id: str | None, policy: Policy) -> datetime:
    """Event time in the store's time zone: a configured zone, else the event's own offset, else the default."""
    zone: tzinfo | None = None
    if store_id is not None and store_id in policy.store_time_zones:
        zone = ZoneInfo(policy.store_time_zones[store_id])
    elif at.utcoffset() is not None and at.utcoffset() != timedelta(0):
        return at
    if zone is None:
        zone = ZoneInfo(policy.default_time_zone)
    return at.astimezone(zone)


def in_quiet_hours(local: datetime, policy: Policy) -> bool:
    start, end, hour = policy.quiet_start_hour, policy.quiet_end_hour, local.hour
    if start == end:
        return False
    return start <= hour < end if start < end else hour >= start or hour < end


def quiet_hours_end(local: datetime, policy: Policy) -> datetime:
    """The first end of quiet hours after `local` (a time inside them), in `local`'s zone."""
    end = local.replace(hour=policy.quiet_end_hour, minute=0, second=0, microsecond=0)
    return end if end > local else end + timedelta(days=1)  # wall-clock day: 08:00 across a DST change too


def deliverable_at(proposal: Proposal, preferred_store: str | None, policy: Policy) -> datetime:
    """When an offer may go out: its trigger's time, or, with `quiet_hours="defer"`, the end of the quiet
    hours (in the store's time zone) that time falls in. A weekly review at Monday 00:00 makes its
    dormant wake-ups at 08:00, instead of losing every one of them to quiet hours."""
    local = local_time(proposal.at, proposal.store_id or preferred_store, policy)
    if policy.quiet_hours != "defer" or not in_quiet_hours(local, policy):
        return proposal.at
    return quiet_hours_end(local, policy).astimezone(proposal.at.tzinfo)


def targeted(definition: CampaignDefinition, member: MemberFacts, store_id: str | None) -> bool:
    if definition.segments and not member.segments & set(definition.segments):
        return False
    if definition.tiers and member.tier not in definition.tiers:
        return False
    store = store_id or member.preferred_store
    return not (definition.stores and store not in definition.stores)


def is_same_offer(past: PastOffer, proposal: Proposal) -> bool:
    """The same products offered again while an earlier offer is valid, from any campaign (two campaigns
    must not both push the same beer); product-less offers (welcome, wake-up) repeat per campaign only."""
    if past.products and proposal.products:
        return past.products == proposal.products
    return past.campaign_id == proposal.campaign_id and past.products == proposal.products


@dataclass(frozen=True)
class StockSignal:
    """What the notifier knows of a SKU's stock at a store at one event time: replenishment reported it
    low (`low`), or goods arrived (`received`)."""

    at: datetime
    kind: Literal["low", "received"]


def low_at(signals: Iterable[StockSignal], at: datetime) -> bool:
    """Held as low at `at` in event time: the latest signal up to `at` is a low report. Goods received
    at the very time of a report clear it. A report made after `at` does not hold back an offer made
    at `at`, however early the notifier read it (a replay reads replenishment's topic ahead of the sales)."""
    latest = max((s for s in signals if s.at <= at), key=lambda s: (s.at, s.kind == "received"), default=None)
    return latest is not None and latest.kind == "low"


def decide(proposal: Proposal, campaign: Campaign, member: MemberFacts, *, consent: bool,
           history: Sequence[PastOffer], low_stock: frozenset[str], policy: Policy) -> Decision:
    """Every guard, in order; the first that stops the offer names the reason. Passing all of them,
    the member's control-group side decides between sending and withholding.

    `consent`: the member's consent for the campaign's channel, as member-profile last published it
    (not enrolled or never asked = False)."""
    definition = campaign.definition
    at = proposal.at
    if member.erased:
        return Decision("suppress", "erased")
    if campaign.status != "running":
        return Decision("suppress", "not_running")
    if (definition.starts_at is not None and at < definition.starts_at) or (
            definition.ends_at is not None and at >= definition.ends_at):
        return Decision("suppress", "outside_schedule")
    if not targeted(definition, member, proposal.store_id):
        return Decision("suppress", "not_targeted")
    if definition.budget is not None and campaign.sent >= definition.budget:
        return Decision("suppress", "budget_exhausted")
    window_end = at + timedelta(days=definition.validity_days)
    if any(is_same_offer(p, proposal) and p.issued_at < window_end and at < p.valid_to for p in history):
        return Decision("suppress", "duplicate")
    if low_stock & set(proposal.products):
        return Decision("suppress", "low_stock")
    if not consent:
        return Decision("suppress", "no_consent")
    if in_quiet_hours(local_time(at, proposal.store_id or member.preferred_store, policy), policy):
        return Decision("suppress", "quiet_hours")
    # Sends on either side of this one: a late trigger (a segment change that arrives after later
    # sales) must not squeeze a third message into a day that already has two.
    sent = [p.issued_at for p in history if not p.withheld]
    if sum(1 for t in sent if abs(at - t) < timedelta(days=1)) >= policy.daily_cap:
        return Decision("suppress", "daily_cap")
    if sum(1 for t in sent if abs(at - t) < timedelta(days=7)) >= policy.weekly_cap:
        return Decision("suppress", "weekly_cap")
    if in_control_group(proposal.member_id, proposal.campaign_id, definition.control_share):
        return Decision("withhold")
    return Decision("send")


MAX_TEXT = 1000  # OfferIssued.text


def render(template: str, *, member_id: str, products: Sequence[str], discount: Decimal, valid_to: datetime,
           store_id: str | None) -> str:
    text = template.format(member_id=member_id, product=products[0] if products else "your next shop",
                           products=", ".join(products) or "your next shop", discount=f"{discount.normalize():f}",
                           valid_to=valid_to.date().isoformat(), store=store_id or "our stores")
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 1] + "…"  # many long SKUs in {products}


def redeems(offer_products: Sequence[str], valid_from: datetime, valid_to: datetime, sale_at: datetime,
            bought: Iterable[str]) -> bool:
    """A later sale by the member, inside the window, of an offered product (any product when none)."""
    if not valid_from < sale_at <= valid_to:
        return False
    return not offer_products or bool(set(offer_products) & set(bought))


@dataclass(frozen=True)
class Purchase:
    """A member's sale or return as redemption reads it. `lines`: (sku, net, offer code scanned)."""

    sale_id: str
    member_id: str | None
    at: datetime
    kind: Literal["sale", "return"]
    lines: tuple[tuple[str, Decimal, str | None], ...]
    total: Decimal
    original_sale_id: str | None = None


@dataclass
class OfferState:
    """An offer's redemption as the walk moves it (`changed`: it differs from what is stored)."""

    offer_id: str
    member_id: str
    products: tuple[str, ...]
    issued_at: datetime
    valid_to: datetime
    redeemed_at: datetime | None = None
    redeemed_revenue: Decimal | None = None
    redeemed_by: str | None = None
    redeemed_by_code: bool = False
    changed: bool = False
    held_by: str | None = field(default=None, init=False)  # `redeemed_by` as loaded: the save checks it is still so

    def __post_init__(self) -> None:
        self.held_by = self.redeemed_by

    def redeem(self, purchase: Purchase, revenue: Decimal, *, by_code: bool) -> None:
        self.redeemed_at, self.redeemed_revenue, self.redeemed_by = purchase.at, revenue, purchase.sale_id
        self.redeemed_by_code = by_code
        self.changed = True

    def undo(self) -> None:
        self.redeemed_at = self.redeemed_revenue = self.redeemed_by = None
        self.redeemed_by_code = False
        self.changed = True


def walk_redemptions(offers: Iterable[OfferState], purchases: Iterable[Purchase]) -> list[OfferState]:
    """Move `offers` through `purchases` in the order they were applied (the topic's); the offers that
    changed. A sale redeems an offer by a scanned code (any buyer: a forwarded code counts), or by
    buying an offered product (anything for a product-less offer) inside the offer's window; a
    return of the offered product from the redeeming sale undoes it, and a later sale may redeem
    again. The same walk serves a sale meeting the offers it finds open and an offer that is
    decided after sales of its window were applied (it arrived late on another topic): either way
    the earliest qualifying sale in topic order redeems it, whichever topic the notifier read first."""
    states = list(offers)
    by_id = {o.offer_id: o for o in states}
    by_member: dict[str, list[OfferState]] = {}
    for state in states:
        by_member.setdefault(state.member_id, []).append(state)
    for purchase in purchases:
        mine = by_member.get(purchase.member_id, []) if purchase.member_id else []
        if purchase.kind == "return":
            returned = {sku for sku, _, _ in purchase.lines}
            for held in mine:
                if (purchase.original_sale_id and held.redeemed_by == purchase.original_sale_id
                        and returned & set(held.products)):
                    held.undo()
            continue
        for _, _, code in purchase.lines:
            scanned = by_id.get(code) if code else None
            if scanned is not None and scanned.redeemed_by is None and scanned.issued_at < purchase.at <= scanned.valid_to:
                scanned.redeem(purchase, sum((net for _, net, c in purchase.lines if c == code), Decimal("0")),
                               by_code=True)
        bought = [sku for sku, _, _ in purchase.lines]
        for held in mine:
            if held.redeemed_by is None and redeems(held.products, held.issued_at, held.valid_to, purchase.at, bought):
                revenue = (sum((net for sku, net, _ in purchase.lines if sku in held.products), Decimal("0"))
                           if held.products else purchase.total)
                held.redeem(purchase, revenue, by_code=False)
    return [s for s in states if s.changed]


# --- measurement ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Arm:
    members: int
    converted: int
    revenue: Decimal

    @property
    def rate(self) -> float | None:
        return self.converted / self.members if self.members else None


@dataclass(frozen=True)
class Uplift:
    treated_rate: float | None
    control_rate: float | None
    uplift: float | None
    ci95: tuple[float, float] | None
    incremental_revenue: Decimal | None


Z95 = 1.959963984540054


def wilson(converted: int, members: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of one proportion: stays inside [0, 1] and is not empty at 0 or n."""
    p = converted / members
    denominator = 1 + z * z / members
    centre = (p + z * z / (2 * members)) / denominator
    half = z * math.sqrt(p * (1 - p) / members + z * z / (4 * members * members)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def uplift(treated: Arm, control: Arm) -> Uplift:
    """Difference of conversion rates with a 95% interval by Newcombe's hybrid score method (method 10,
    from two Wilson intervals: well-behaved at 0% and 100% conversion and with small arms, where the
    Wald interval collapses to a point), and the revenue the treated group brought beyond what the
    control's revenue per member predicts."""
    pt, pc = treated.rate, control.rate
    if pt is None or pc is None:
        return Uplift(pt, pc, None, None, None)
    diff = pt - pc
    lt, ut = wilson(treated.converted, treated.members)
    lc, uc = wilson(control.converted, control.members)
    low = diff - math.sqrt((pt - lt) ** 2 + (uc - pc) ** 2)
    high = diff + math.sqrt((ut - pt) ** 2 + (pc - lc) ** 2)
    per_treated = treated.revenue / treated.members
    per_control = control.revenue / control.members
    incremental = ((per_treated - per_control) * treated.members).quantize(Decimal("0.01"))
    return Uplift(pt, pc, diff, (low, high), incremental)


# --- birthdays, webhooks ----------------------------------------------------------------------

def birthdays_on(day: date) -> set[str]:
    """The MM-DD birthdays celebrated on `day`: 29 February ones on the 28th in a common year."""
    keys = {day.strftime("%m-%d")}
    if day.month == 2 and day.day == 28 and not _leap(day.year):
        keys.add("02-29")
    return keys


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def days_entered(previous: date | None, today: date, *, most: int = 7) -> list[date]:
    """Days the event-time clock entered since `previous` (the first clock reading enters only today;
    a jump of months is not replayed as months of birthdays: the last `most` days at most)."""
    if previous is None:
        return [today]
    if today <= previous:
        return []
    span = min((today - previous).days, most)
    return [today - timedelta(days=n) for n in range(span - 1, -1, -1)]


def webhook_signature(secret: str, timestamp: int, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256(secret, "<timestamp>." + body): the receiver recomputes it and
    refuses old timestamps (replay)."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return "sha256=" + digest


def retry_delay(attempts: int, *, base_seconds: float, cap_seconds: float) -> float:
    """Exponential backoff after the `attempts`-th failure: base, 2x base, 4x base … at most cap."""
    return float(min(cap_seconds, base_seconds * 2 ** max(0, attempts - 1)))
