"""The event contract: one envelope for every event, one payload model per event type.

Every event crossing a service boundary is defined here and nowhere else. Within a topic version
only optional fields may be added; a breaking change is a new topic (`pos.sales.v2`).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from functools import cached_property
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from crm_shared.currencies import ISO_4217
from crm_shared.money import (
    MONEY_SERIALIZER,
    NON_NEGATIVE_MONEY_SCHEMA,
    Money,
    NonNegativeMoney,
    parse_money,
)

# Namespace for deterministic event ids: the same sale always gets the same event id, whether it
# arrives over HTTP, from a bulk replay or from a republish, so every consumer can dedupe on it.
EVENT_NAMESPACE = uuid.UUID("6f1f8f9e-3c55-4d1c-9a35-2b0f4c1e7a01")
_NAMESPACE_SHA1 = hashlib.sha1(EVENT_NAMESPACE.bytes)


def event_uuid(identity: str) -> uuid.UUID:
    """`uuid.uuid5(EVENT_NAMESPACE, identity)`, the namespace's hash state computed once (ids are derived
    on hot paths: one per purchase-order need, per segment change; this takes ~60 % of uuid5's time)."""
    digest = _NAMESPACE_SHA1.copy()
    digest.update(identity.encode("utf-8"))
    return uuid.UUID(bytes=digest.digest()[:16], version=5)

Identifier = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:\-]+$")]
# No control characters: they have no place on a receipt, and PostgreSQL refuses NUL in text.
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
EARLIEST_YEAR, LATEST_YEAR = 1990, 2200
MAX_LINES_PER_SALE = 2000  # wholesale orders run long: one Online Retail invoice has 1,114 lines
MAX_QUANTITY = 1_000_000

P = TypeVar("P", bound=BaseModel)


class Envelope(BaseModel, Generic[P]):
    """What every event on every topic looks like on the wire."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    event_id: uuid.UUID
    event_type: str
    schema_version: int = Field(ge=1)
    occurred_at: AwareDatetime = Field(description="Event time: when it happened in the shop, not when we saw it")
    source: str
    key: str = Field(description="Partition key: the entity whose order matters")
    payload: P


def _line_discount(value: Any, info: ValidationInfo) -> Decimal:
    """A line's discount: a non-negative amount no larger than the line's value. Parsed and checked in
    one call (every consuming service decodes every line: two field validators more cost ~30 %)."""
    discount = parse_money(value)
    if discount < 0:
        raise ValueError("must not be negative (a discount is written as a positive amount)")
    if discount:
        quantity, unit_price = info.data.get("quantity"), info.data.get("unit_price")
        if quantity is not None and unit_price is not None and discount > unit_price * quantity:
            raise ValueError(f"{discount} is more than the line's value {unit_price * quantity}")
    return discount


LineDiscount = Annotated[Decimal, BeforeValidator(_line_discount), MONEY_SERIALIZER, NON_NEGATIVE_MONEY_SCHEMA]


class SaleLine(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    sku: Annotated[str, StringConstraints(strict=True, strip_whitespace=True, min_length=1, max_length=64,
                                          pattern=PRINTABLE)]
    description: Annotated[str, StringConstraints(strict=True, max_length=300, pattern=PRINTABLE)] = ""
    quantity: int = Field(strict=True, gt=0, le=MAX_QUANTITY, description="Units sold (or returned); always positive")
    unit_price: NonNegativeMoney = Field(description="Price of one unit, a decimal string with at most 4 decimals; "
                                                     "may be 0")
    discount: LineDiscount = Field(default=Decimal("0"), description="Discount on the whole line, a decimal string")
    offer_code: Identifier | None = Field(default=None, exclude_if=lambda code: code is None,  # absent, not null
                                          description="An offer id the customer presented for this line "
                                                      "(marketing.offers.v1), when the till scanned one")

    @property
    def gross(self) -> Decimal:
        return self.unit_price * self.quantity

    @property
    def net(self) -> Decimal:
        return self.gross - self.discount


class Sale(BaseModel):
    """A sale or a return as a terminal rings it up. Payload of `pos.sales.v1`."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    sale_id: Identifier
    store_id: Identifier
    terminal_id: Identifier
    member_id: Identifier | None = Field(default=None, description="Null for an anonymous sale")
    occurred_at: AwareDatetime = Field(description="When the sale was rung up, with its time zone")
    currency: Annotated[str, StringConstraints(strict=True, min_length=3, max_length=3)]
    kind: Literal["sale", "return"] = "sale"
    original_sale_id: Identifier | None = Field(default=None, description="For a return: the sale it reverses, when known")
    lines: list[SaleLine] = Field(min_length=1, max_length=MAX_LINES_PER_SALE)

    @field_validator("occurred_at")
    @classmethod
    def _plausible_year(cls, value: datetime) -> datetime:
        # Checked on the naive year first: converting year 1 or 9999 across time zones overflows.
        if not EARLIEST_YEAR <= value.year <= LATEST_YEAR:
            raise ValueError(f"must be between {EARLIEST_YEAR} and {LATEST_YEAR}")
        return value

    @field_validator("currency")
    @classmethod
    def _known_currency(cls, value: str) -> str:
        if value not in ISO_4217:
            raise ValueError(f"{value!r} is not an ISO 4217 currency code")
        return value

    @field_validator("original_sale_id")
    @classmethod
    def _original_only_on_returns(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("kind", "sale") != "return":
            raise ValueError("is only allowed on a return (kind \"return\")")
        return value

    @property
    def total(self) -> Decimal:
        """Net value: positive for a sale, negative for a return."""
        net = sum((line.net for line in self.lines), Decimal("0"))
        return -net if self.kind == "return" else net

    @property
    def partition_key(self) -> str:
        return self.member_id if self.member_id is not None else self.store_id

    @cached_property
    def event_id(self) -> uuid.UUID:
        return sale_event_id(self.store_id, self.terminal_id, self.sale_id)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Sale:
        """A copy whose derived values are derived again: pydantic copies `__dict__`, where
        `cached_property` keeps `event_id`, so a copy with another sale id kept the old event id."""
        copied = super().model_copy(update=update, deep=deep)
        copied.__dict__.pop("event_id", None)
        return copied


def sale_event_id(store_id: str, terminal_id: str, sale_id: str) -> uuid.UUID:
    return event_uuid(f"sale/{store_id}/{terminal_id}/{sale_id}")


SaleRecorded = Envelope[Sale]
# Parametrise once: `Envelope[Any](...)` looks the generic up on every call (~50 us, measured).
AnyEnvelope = Envelope[Any]
SALE_EVENT_TYPES = {"sale": "SaleRecorded", "return": "ReturnRecorded"}
SALE_SCHEMA_VERSION = 1


def sale_recorded(sale: Sale, *, source: str) -> Envelope[Sale]:
    """Wrap a sale in its envelope; the event id is derived from the sale's identity."""
    return Envelope[Sale](
        event_id=sale.event_id,
        event_type=SALE_EVENT_TYPES[sale.kind],
        schema_version=SALE_SCHEMA_VERSION,
        occurred_at=sale.occurred_at,
        source=source,
        key=sale.partition_key,
        payload=sale,
    )


def sale_recorded_document(sale: Sale, *, source: str, payload: dict[str, Any]) -> dict[str, Any]:
    """`sale_recorded(sale).model_dump(mode="json")`, built around a payload the caller already dumped
    (the gateway dumps each sale once for its ledger, its fingerprint and its event)."""
    return {
        "event_id": str(sale.event_id),
        "event_type": SALE_EVENT_TYPES[sale.kind],
        "schema_version": SALE_SCHEMA_VERSION,
        "occurred_at": payload["occurred_at"],
        "source": source,
        "key": sale.partition_key,
        "payload": payload,
    }


# --- member-profile's events -------------------------------------------------------------------

Tier = Literal["member", "silver", "gold", "vip"]


class MemberErased(BaseModel):
    """A member asked to be forgotten. Payload of `member.erased.v1`: every service erases what it
    holds about them (personal data, contact history); pseudonymous aggregates may stay."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    member_id: Identifier
    erased_at: AwareDatetime
    requested_by: str = Field(description="Key id (a hash) of the ops key that asked; never a name")


ContactChannel = Literal["email", "sms", "push", "phone"]


class MemberContactability(BaseModel):
    """Payload of `member.consents.v1` (compacted, key = member id): who may be contacted, on which
    channel, as member-profile holds it after every enrolment, consent change, edit and erasure.

    Only what a marketing service needs to decide whether and when to contact: consent per channel,
    the home store, and the birthday as month-day (never the year, never a name or address)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    member_id: Identifier
    as_of: AwareDatetime = Field(description="When member-profile recorded the change (wall clock of the desk)")
    enrolled: bool = Field(description="False once erased; a card seen at a till without enrolment has no record")
    consents: dict[ContactChannel, bool] = Field(default_factory=dict, description="Current consent per channel")
    home_store: Identifier | None = None
    birthday: Annotated[str, StringConstraints(pattern=r"^(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$")] | None = Field(
        default=None, description="Month and day only (MM-DD), for birthday offers")
    erased: bool = False


class TierChanged(BaseModel):
    """Payload of `member.tier_changed.v1`: an upgrade or a downgrade, evaluated in event time."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    member_id: Identifier
    old_tier: Tier
    new_tier: Tier
    rolling_spend: Money = Field(description="Net spend over the 12 months of event time up to `effective_at`")
    effective_at: AwareDatetime


class VisitRhythm(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    intervals: int
    mean_days: float
    spread_days: float
    days_overdue: float | None


class MemberProfileUpdated(BaseModel):
    """Payload of the compacted `member.profiles.v1` (key = member id): the latest profile, for the
    segmenter and the notifier. Personal data never travels here."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    member_id: Identifier
    as_of: AwareDatetime
    first_purchase_at: AwareDatetime | None
    last_purchase_at: AwareDatetime | None
    recency_days: float | None
    frequency: int
    returns: int
    monetary: Money
    average_basket_value: Money
    average_basket_size: float
    returns_rate: float
    discount_share: float
    preferred_store: str | None
    hour_of_day: dict[int, int]
    weekday: dict[int, int]
    visit_rhythm: VisitRhythm
    tier: Tier
    points_balance: int
    erased: bool = False
    categories: dict[str, float] = Field(default_factory=dict, description="Top categories by share of items")
    brands: dict[str, float] = Field(default_factory=dict, description="Brands by share of items")


def member_event(payload: BaseModel, *, event_type: str, member_id: str, occurred_at: datetime, source: str,
                 identity: str) -> Envelope[Any]:
    """Wrap a member event; `identity` names the fact (e.g. `tier/<member>/<sale event id>`) so the same
    fact always gets the same event id, however often it is recomputed."""
    return AnyEnvelope(event_id=event_uuid(identity), event_type=event_type, schema_version=1,
                       occurred_at=occurred_at, source=source, key=member_id, payload=payload)


def contactability_event(payload: MemberContactability, *, source: str = "member-profile") -> Envelope[Any]:
    """`member.consents.v1` record: every change is its own fact (a consent given twice is two events)."""
    return AnyEnvelope(event_id=uuid.uuid4(), event_type="MemberContactability", schema_version=1,
                       occurred_at=payload.as_of, source=source, key=payload.member_id, payload=payload)


# --- the product catalog ------------------------------------------------------------------------

class Product(BaseModel):
    """Payload of the compacted `catalog.products.v1` (key = sku). Supplier terms are optional here;
    replenishment adds them."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    sku: Annotated[str, StringConstraints(strict=True, min_length=1, max_length=64, pattern=PRINTABLE)]
    description: Annotated[str, StringConstraints(max_length=300, pattern=PRINTABLE)] = ""
    department: str | None = None
    category: str | None = None
    product_type: str | None = None
    brand: str | None = None
    manufacturer_id: str | None = None
    package_size: str | None = None
    # Supplier terms (replenishment); `crm_shared.supplier_terms` fills them where the data has none.
    supplier_id: Identifier | None = None
    unit_cost: Money | None = None
    pack_size: int | None = Field(default=None, ge=1, le=100_000)
    min_order_quantity: int | None = Field(default=None, ge=1, le=1_000_000)
    lead_time_days: int | None = Field(default=None, ge=0, le=365)
    shelf_capacity: int | None = Field(default=None, ge=1, le=10_000_000)
    launched_at: AwareDatetime | None = Field(default=None, description="First day on sale, for a new arrival; "
                                                                        "absent for the standing range")


def product_listed(product: Product, *, source: str, occurred_at: datetime) -> Envelope[Product]:
    """Same product, same facts → same event id (a catalog load run twice changes nothing)."""
    identity = "product/" + product.model_dump_json()
    return Envelope[Product](event_id=event_uuid(identity), event_type="ProductListed",
                             schema_version=1, occurred_at=occurred_at, source=source, key=product.sku,
                             payload=product)


ProductListed = Envelope[Product]


# --- the segmenter's events ---------------------------------------------------------------------

SegmentDimension = Literal["value_tier", "persona", "cluster"]


class MemberSegmentChanged(BaseModel):
    """Payload of `member.segments.v1` (key = member id): one of a member's segments changed.

    `dimension` says which: `value_tier` (the RFM map: champions … lost), `persona` (a rule a
    marketer can read: dormant, new_member, price_sensitive, brand_loyal, …; `dormant` — overdue by
    the member's own rhythm — is the notifier's wake-up trigger) or `cluster` (learned online).
    `current` is the member's whole segment set after the change, so a consumer needs no other state."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    member_id: Identifier
    dimension: SegmentDimension
    old: str | None
    new: str | None
    reason: str = Field(max_length=500, description="Why, in words: the rule or the features behind the change")
    as_of: AwareDatetime = Field(description="Event time the decision was taken at")
    current: dict[str, str] = Field(default_factory=dict, description="Every dimension's segment after the change")
    p_active: float | None = Field(default=None, ge=0, le=1, description="Probability the member is still active")
    expected_next_visit_at: AwareDatetime | None = None


class RuleDocument(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    antecedents: list[str]
    consequent: str
    support: float
    confidence: float
    lift: float


class AssociationRulesChanged(BaseModel):
    """Payload of `analytics.associations.v1` (key = scope): the top rules of a scope (`chain` or a
    store id) over its event-time window, published when they change."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    scope: str
    window_start: AwareDatetime | None
    window_end: AwareDatetime
    baskets: int
    min_support: float
    min_confidence: float
    rules: list[RuleDocument]


def segmenter_event(payload: BaseModel, *, event_type: str, key: str, occurred_at: datetime, identity: str,
                    trusted: bool = False) -> Envelope[Any]:
    """Same decision, same event id (a redelivered profile or a restart republishes nothing new).

    `trusted`: the payload was built by our own code from validated inputs, so the envelope is
    assembled without validating it again (the segmenter's hot path; its tests validate a sample)."""
    if trusted:
        return AnyEnvelope.model_construct(event_id=event_uuid(identity), event_type=event_type,
                                           schema_version=1, occurred_at=occurred_at, source="segmenter", key=key,
                                           payload=payload)
    return AnyEnvelope(event_id=event_uuid(identity), event_type=event_type, schema_version=1,
                       occurred_at=occurred_at, source="segmenter", key=key, payload=payload)
