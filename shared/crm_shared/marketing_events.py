"""The marketing side of the event contract: offers the notifier issues (or withholds).

Same envelope as every other event (`crm_shared.events.Envelope`); version 1 of the payload.

| topic                 | payload        | key       | event_type                      |
|-----------------------|----------------|-----------|---------------------------------|
| marketing.offers.v1   | `OfferIssued`  | member_id | OfferIssued / OfferWithheld     |
| marketing.offer_webhooks.dlq | `OfferDeliveryFailed` | offer_id | OfferDeliveryFailed |

A control-group member gets an `OfferWithheld` record (`withheld=true`, no text): nothing is sent,
but the record is there so that redemptions of treated and control members can be compared.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from crm_shared.events import PRINTABLE, AnyEnvelope, Envelope, Identifier, event_uuid
from crm_shared.money import Money

OfferChannel = Literal["email", "sms", "push"]
TriggerKind = Literal["cross_sell", "dormant_wakeup", "tier_upgrade", "welcome", "run_out", "birthday", "after_sale",
                      "new_arrival"]
MARKETING_SCHEMA_VERSION = 1


class OfferReason(BaseModel):
    """Why this member got this offer, in terms a marketer can check."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    trigger: TriggerKind
    detail: Annotated[str, StringConstraints(max_length=500, pattern=PRINTABLE)] = Field(
        description="The rule (`A + B -> C, confidence 0.61, lift 3.2`), the segment change or the tier change")
    source_event_id: uuid.UUID = Field(description="The event that triggered the offer")
    rule_scope: str | None = Field(default=None, description="Cross-sell: the basket-rule scope (`chain` or a store)")
    rule_antecedents: list[str] = Field(default_factory=list)
    rule_consequent: str | None = None
    rule_confidence: float | None = None
    rule_lift: float | None = None
    segment: str | None = Field(default=None, description="Dormant wake-up: the persona; tier upgrade: the new tier")


class OfferIssued(BaseModel):
    """Payload of `marketing.offers.v1` (key = member id): one personalised offer, or its withheld twin."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    offer_id: Identifier
    member_id: Identifier
    campaign_id: Identifier
    channel: OfferChannel
    template: Annotated[str, StringConstraints(max_length=500, pattern=PRINTABLE)]
    text: Annotated[str, StringConstraints(max_length=1000, pattern=PRINTABLE)] = Field(
        description="The rendered message; empty when withheld")
    products: list[str] = Field(default_factory=list, description="SKUs the offer is for; empty = any purchase")
    discount_percent: Money = Field(description="Percent off the offered products, a decimal string")
    reason: OfferReason
    store_id: Identifier | None = None
    valid_from: AwareDatetime = Field(description="Event time the offer starts and may be sent: the triggering "
                                      "event's time, or the end of the quiet hours it fell in")
    valid_to: AwareDatetime
    withheld: bool = Field(default=False, description="Control group: recorded, not sent")


def offer_event(offer: OfferIssued) -> Envelope[Any]:
    """One offer id, one event id: a recomputed or redelivered decision publishes the same event."""
    return AnyEnvelope(event_id=event_uuid(f"offer/{offer.offer_id}"),
                       event_type="OfferWithheld" if offer.withheld else "OfferIssued",
                       schema_version=MARKETING_SCHEMA_VERSION, occurred_at=offer.valid_from, source="notifier",
                       key=offer.member_id, payload=offer)


OfferPublished = Envelope[OfferIssued]


class OfferDeliveryFailed(BaseModel):
    """Payload of `marketing.offer_webhooks.dlq`: an offer the marketing tool's webhook never accepted
    after every retry. The offer is still on `marketing.offers.v1`; this says the tool did not get it."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    offer_id: Identifier
    member_id: Identifier
    attempts: int = Field(ge=1)
    last_error: Annotated[str, StringConstraints(max_length=500)]
    failed_at: AwareDatetime = Field(description="Wall clock of the last attempt")
    body: str = Field(description="The JSON body that was offered to the webhook (the offer's event)")


def delivery_failed_event(failure: OfferDeliveryFailed) -> Envelope[Any]:
    return AnyEnvelope(event_id=event_uuid(f"offer-webhook-failed/{failure.offer_id}"),
                       event_type="OfferDeliveryFailed", schema_version=MARKETING_SCHEMA_VERSION,
                       occurred_at=failure.failed_at, source="notifier", key=failure.offer_id, payload=failure)
