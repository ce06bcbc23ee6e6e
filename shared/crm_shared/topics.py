"""The one place that knows topic names.

Topics are nouns with a version suffix. Every consumed topic has a `.dlq` twin where poison
messages go with their reason in the headers.
"""

from __future__ import annotations

from dataclasses import dataclass

DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True)
class Topic:
    name: str
    description: str
    compacted: bool = False
    has_dlq: bool = True

    def qualified(self, prefix: str = "") -> str:
        return f"{prefix}{self.name}"

    def dlq(self, prefix: str = "") -> str:
        return f"{prefix}{self.name}{DLQ_SUFFIX}"


POS_SALES = Topic("pos.sales.v1", "Every sale and return from a store terminal; key = member id, or store id for anonymous sales")
MEMBER_PROFILES = Topic("member.profiles.v1", "360-degree member profiles, latest per member", compacted=True)
MEMBER_ERASED = Topic("member.erased.v1", "A member asked to be forgotten; every service erases personal data")
MEMBER_CONSENTS = Topic("member.consents.v1", "Consent per channel, home store and birthday (MM-DD); latest per member",
                        compacted=True)
MEMBER_TIER_CHANGED = Topic("member.tier_changed.v1", "Loyalty tier upgrades and downgrades")
MEMBER_SEGMENTS = Topic("member.segments.v1", "Segment and persona changes per member")
ANALYTICS_ASSOCIATIONS = Topic("analytics.associations.v1", "Market-basket association rules when the top rules change")
CATALOG_PRODUCTS = Topic("catalog.products.v1", "Product catalog with supplier terms", compacted=True)
INVENTORY_RECEIPTS = Topic("inventory.receipts.v1", "Goods receipts at stores")
INVENTORY_LOW_STOCK = Topic("inventory.low_stock.v1", "SKUs with low days of cover per store")
SUPPLIER_REORDERS = Topic("supplier.reorders.v1", "Purchase orders raised for suppliers")
SUPPLIER_ACKS = Topic("supplier.acks.v1", "Supplier acknowledgements of purchase orders")
MARKETING_OFFERS = Topic("marketing.offers.v1", "Personalised offers (and withheld control records)")
MARKETING_OFFER_WEBHOOKS_DLQ = Topic("marketing.offer_webhooks.dlq",
                                     "Offers the marketing tool's webhook refused after every retry", has_dlq=False)

# Never written to: its absence tells a producer that the broker was restarted empty (the embedded
# broker is memory-only, and it acknowledges writes to topics it no longer has).
BROKER_SENTINEL = Topic("crm.broker-sentinel", "Exists while the broker keeps its topics", has_dlq=False)

ALL_TOPICS: tuple[Topic, ...] = (
    BROKER_SENTINEL,
    POS_SALES,
    MEMBER_PROFILES,
    MEMBER_ERASED,
    MEMBER_TIER_CHANGED,
    MEMBER_CONSENTS,
    MEMBER_SEGMENTS,
    ANALYTICS_ASSOCIATIONS,
    CATALOG_PRODUCTS,
    INVENTORY_RECEIPTS,
    INVENTORY_LOW_STOCK,
    SUPPLIER_REORDERS,
    SUPPLIER_ACKS,
    MARKETING_OFFERS,
    MARKETING_OFFER_WEBHOOKS_DLQ,
)


def all_topic_names(prefix: str = "") -> list[str]:
    """Every topic and its dead-letter twin, as they are created on the broker."""
    names: list[str] = []
    for topic in ALL_TOPICS:
        names.append(topic.qualified(prefix))
        if topic.has_dlq:
            names.append(topic.dlq(prefix))
    return names
