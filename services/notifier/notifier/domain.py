"""The notifier's decisions, pure: which offer a trigger calls for, whether a guard stops it, who is in
the control group, and what a campaign's report says. No I/O, no clock: every time is an argument."""

from __future__ import annotations

import hashlib
import math
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator

OfferChannel = Literal["email", "sms", "push"]
TriggerKind = Literal["cross_sell", "dormant_wakeup", "tier_upgrade", "welcome", "run_out"]
TRIGGERS: tuple[TriggerKind, ...] = ("cross_sell", "dormant_wakeup", "tier_upgrade", "welcome", "run_out")
DEFAULT_TRIGGERS: tuple[TriggerKind, ...] = ("cross_sell", "dormant_wakeup", "tier_upgrade", "welcome")
CampaignStatus = Literal["draft", "running", "stopped"]
TIER_RANK = {"member": 0, "silver": 1, "gold": 2, "vip": 3}
PLACEHOLDERS = frozenset({"member_id", "product", "products", "discount", "valid_to", "store"})

# Why an offer was not sent; every one is counted per campaign.
SuppressionReason = Literal["erased", "not_running", "outside_schedule", "not_targeted", "budget_exhausted", "duplicate",
                            "low_stock", "no_consent", "consent_unknown", "quiet_hours", "daily_cap", "weekly_cap"]

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=120, pattern=r"^[^\x00-\x1f\x7f]*$")]
Label = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:\-]+$")]


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


def targeted(definition: CampaignDefinition, member: MemberFacts, store_id: str | None) -> bool:
    if definition.segments and not member.segments & set(definition.segments):
        return False
    if definition.tiers and member.tier not in definition.tiers:
        return False
    store = store_id or member.preferred_store
    return not (definition.stores and store not in definition.stores)


def decide(proposal: Proposal, campaign: Campaign, member: MemberFacts, *, consent: bool | None,
           history: Sequence[PastOffer], low_stock: frozenset[str], policy: Policy) -> Decision:
    """Every guard, in order; the first that stops the offer names the reason. Passing all of them,
    the member's control-group side decides between sending and withholding.

    `consent`: True/False for the campaign's channel, None when it could not be learned (treated as no)."""
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
    if any(p.campaign_id == proposal.campaign_id and p.products == proposal.products and p.valid_to > at
           for p in history):
        return Decision("suppress", "duplicate")
    if low_stock & set(proposal.products):
        return Decision("suppress", "low_stock")
    if consent is None:
        return Decision("suppress", "consent_unknown")
    if not consent:
        return Decision("suppress", "no_consent")
    if in_quiet_hours(local_time(at, proposal.store_id or member.preferred_store, policy), policy):
        return Decision("suppress", "quiet_hours")
    sent = [p.issued_at for p in history if not p.withheld and p.issued_at <= at]
    if sum(1 for t in sent if at - t < timedelta(days=1)) >= policy.daily_cap:
        return Decision("suppress", "daily_cap")
    if sum(1 for t in sent if at - t < timedelta(days=7)) >= policy.weekly_cap:
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


def uplift(treated: Arm, control: Arm) -> Uplift:
    """Difference of conversion rates with a normal-approximation 95% interval (Wald, unpooled), and
    the revenue the treated group brought beyond what the control rate predicts."""
    pt, pc = treated.rate, control.rate
    if pt is None or pc is None:
        return Uplift(pt, pc, None, None, None)
    diff = pt - pc
    se = math.sqrt(pt * (1 - pt) / treated.members + pc * (1 - pc) / control.members)
    per_treated = treated.revenue / treated.members
    per_control = control.revenue / control.members
    incremental = ((per_treated - per_control) * treated.members).quantize(Decimal("0.01"))
    return Uplift(pt, pc, diff, (diff - 1.96 * se, diff + 1.96 * se), incremental)
