"""Supplier terms for catalogs whose data has none: generated deterministically from a seed.

Neither Complete Journey nor Online Retail says who supplies a product, at what cost, in which
packs or with which lead time. Replenishment needs those, so they are GENERATED here, not
observed: each term is a pure function of sha256(seed, sku, term name), so the same product
always gets the same terms on every machine and every run. Where the data says something, it
is used: a Complete Journey product's `manufacturer_id` becomes its supplier (`mfr-<id>`), and
an Online Retail product's cost is derived from the median price it sold at.

| term                | rule                                                                          |
|---------------------|-------------------------------------------------------------------------------|
| supplier_id         | `mfr-<manufacturer_id>` when known, else one of 25 suppliers `sup-00`..`sup-24` |
| pack_size           | 1, 6, 12, 24 or 48 (weights 2, 4, 3, 2, 1)                                    |
| min_order_quantity  | pack_size × 1..4                                                              |
| lead_time_days      | 1..7 (weights 1, 3, 3, 2, 1, 1, 1: mostly 2-3 days)                           |
| unit_cost           | 55-70 % of the median selling price when known, else 0.50-20.00               |
| shelf_capacity      | max(4 packs, 24..480 units)                                                   |
"""

from __future__ import annotations

import hashlib
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from decimal import Decimal

from crm_shared.events import Product, Sale

DEFAULT_SEED = "crm-supplier-terms-v1"
SUPPLIERS = 25
PACK_SIZES = ((1, 2), (6, 4), (12, 3), (24, 2), (48, 1))
LEAD_TIMES = ((1, 1), (2, 3), (3, 3), (4, 2), (5, 1), (6, 1), (7, 1))
CENT = Decimal("0.01")


def _draw(seed: str, sku: str, term: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{sku}/{term}".encode()).digest()[:8], "big")


def _weighted(choices: tuple[tuple[int, int], ...], draw: int) -> int:
    total = sum(weight for _, weight in choices)
    point = draw % total
    for value, weight in choices:
        if point < weight:
            return value
        point -= weight
    raise AssertionError("unreachable")


def with_supplier_terms(product: Product, *, seed: str = DEFAULT_SEED, median_price: Decimal | None = None) -> Product:
    """The product with every missing supplier term filled in; terms it already has are kept."""
    sku = product.sku
    pack = product.pack_size or _weighted(PACK_SIZES, _draw(seed, sku, "pack"))
    supplier = product.supplier_id or (f"mfr-{product.manufacturer_id}" if product.manufacturer_id
                                       else f"sup-{_draw(seed, sku, 'supplier') % SUPPLIERS:02d}")
    if product.unit_cost is not None:
        cost = product.unit_cost
    elif median_price is not None and median_price > 0:
        share = Decimal(55 + _draw(seed, sku, "margin") % 16) / 100
        cost = max(CENT, (median_price * share).quantize(CENT))
    else:
        cost = (Decimal(50 + _draw(seed, sku, "cost") % 1951) / 100).quantize(CENT)
    return product.model_copy(update={
        "supplier_id": supplier,
        "unit_cost": cost,
        "pack_size": pack,
        "min_order_quantity": product.min_order_quantity or pack * (1 + _draw(seed, sku, "moq") % 4),
        "lead_time_days": product.lead_time_days if product.lead_time_days is not None
        else _weighted(LEAD_TIMES, _draw(seed, sku, "lead")),
        "shelf_capacity": product.shelf_capacity or max(4 * pack, 24 + _draw(seed, sku, "shelf") % 457),
    })


def catalog_with_terms(products: Iterable[Product], *, seed: str = DEFAULT_SEED) -> list[Product]:
    return [with_supplier_terms(p, seed=seed) for p in products]


def products_from_sales(sales: Sequence[Sale], *, seed: str = DEFAULT_SEED) -> list[Product]:
    """A catalog from sales (Online Retail has no product file): the first description seen and the
    median unit price of each sku's sale lines, then generated supplier terms."""
    prices: dict[str, list[Decimal]] = defaultdict(list)
    descriptions: dict[str, str] = {}
    for sale in sales:
        for line in sale.lines:
            if line.description and line.sku not in descriptions:
                descriptions[line.sku] = line.description
            if sale.kind == "sale":
                prices[line.sku].append(line.unit_price)
    skus = sorted(set(prices) | set(descriptions))
    return [with_supplier_terms(Product(sku=sku, description=descriptions.get(sku, "")), seed=seed,
                                median_price=statistics.median(prices[sku]) if prices.get(sku) else None)
            for sku in skus]
