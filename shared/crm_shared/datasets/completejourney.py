"""84.51° / dunnhumby "The Complete Journey" (R package completejourney): products and transactions.

Transactions become sales: one sale per `basket_id`, `household_id` → `member_id`, store
`cj-<store_id>`, terminal `till`, `transaction_timestamp` in America/New_York, currency USD;
a line per row with `product_id` as the sku. Money: `sales_value` is what the shopper paid, and
`retail_disc` + `coupon_disc` + `coupon_match_disc` (stored as positive amounts) are the
discounts, so the shelf price is (paid + discounts) / quantity, kept to 4 decimals; the line's
discount is then set so that price × quantity − discount equals what was paid, to the cent.
Rows with quantity 0 (416 in the sample) are excluded and counted. The sample holds 75,000 rows
drawn at random from the full file, so its baskets are partial.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from crm_shared.events import Product, Sale, SaleLine

NEW_YORK = ZoneInfo("America/New_York")
FOUR = Decimal("0.0001")


def _open(path: Path) -> io.TextIOWrapper:
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8", newline="")


def load_products(path: str | Path) -> list[Product]:
    with _open(Path(path)) as handle:
        return [Product(sku=row["product_id"], department=row["department"] or None,
                        category=row["product_category"] or None, product_type=row["product_type"] or None,
                        brand=row["brand"] or None, manufacturer_id=row["manufacturer_id"] or None,
                        package_size=row["package_size"] or None)
                for row in csv.DictReader(handle)]


@dataclass
class TransactionsSummary:
    rows_read: int = 0
    baskets: int = 0
    lines: int = 0
    households: int = 0
    stores: int = 0
    excluded_zero_quantity_rows: int = 0

    def as_table(self) -> list[tuple[str, str]]:
        return [(name.replace("_", " "), f"{value:,}") for name, value in self.__dict__.items()]


def line_for(sku: str, quantity: int, paid: Decimal, discounts: Decimal) -> SaleLine:
    """A line whose net is exactly what was paid, with the shelf price to 4 decimals."""
    unit_price = ((paid + discounts) / quantity).quantize(FOUR, rounding=ROUND_HALF_EVEN)
    discount = unit_price * quantity - paid
    if discount < 0:  # rounding the price down left the line short: round up instead
        unit_price += FOUR
        discount = unit_price * quantity - paid
    return SaleLine(sku=sku, quantity=quantity, unit_price=unit_price, discount=discount)


def load_transactions(path: str | Path) -> tuple[list[Sale], TransactionsSummary]:
    summary = TransactionsSummary()
    baskets: dict[str, dict[str, object]] = {}
    lines: dict[str, list[SaleLine]] = defaultdict(list)
    with _open(Path(path)) as handle:
        for row in csv.DictReader(handle):
            summary.rows_read += 1
            quantity = int(row["quantity"])
            if quantity <= 0:
                summary.excluded_zero_quantity_rows += 1
                continue
            paid = Decimal(row["sales_value"])
            discounts = Decimal(row["retail_disc"]) + Decimal(row["coupon_disc"]) + Decimal(row["coupon_match_disc"])
            basket = row["basket_id"]
            when = datetime.strptime(row["transaction_timestamp"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=NEW_YORK)
            header = baskets.setdefault(basket, {"member": row["household_id"], "store": row["store_id"], "at": when})
            header["at"] = min(header["at"], when)  # type: ignore[type-var]
            lines[basket].append(line_for(row["product_id"], quantity, paid, discounts))
    sales = [Sale(sale_id=basket, store_id=f"cj-{header['store']}", terminal_id="till",
                  member_id=str(header["member"]), occurred_at=header["at"], currency="USD",  # type: ignore[arg-type]
                  lines=lines[basket])
             for basket, header in baskets.items()]
    sales.sort(key=lambda s: (s.occurred_at, s.sale_id))
    summary.baskets = len(sales)
    summary.lines = sum(len(s.lines) for s in sales)
    summary.households = len({s.member_id for s in sales})
    summary.stores = len({s.store_id for s in sales})
    return sales, summary
