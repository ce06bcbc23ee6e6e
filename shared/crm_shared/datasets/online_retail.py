"""Turn the UCI "Online Retail" CSV (or "Online Retail II") into `Sale` events for a replay.

A pure module: it reads the one file it is given (gzip or plain CSV) and returns contract
objects; it opens no connection and never looks at the clock.

How a CSV row becomes part of a `Sale`:

| CSV column (Online Retail / II)   | Sale field                   | rule                                                       |
|-----------------------------------|------------------------------|------------------------------------------------------------|
| InvoiceNo / Invoice               | sale_id                      | the invoice number as is ("536365", "C536379")             |
|                                   | kind                         | "return" when the invoice starts with "C", else "sale"     |
| InvoiceDate / InvoiceDate         | occurred_at                  | Europe/London wall time; the invoice's earliest row wins   |
| CustomerID / Customer ID          | member_id                    | "17850" or "13085.0" -> "17850"/"13085"; blank -> None     |
| Country / Country                 | store_id                     | one store per country: "or-" + slug, see below             |
| (none)                            | terminal_id, currency        | "web-1", "GBP": it is one web shop selling in pounds       |
| StockCode / StockCode             | line.sku                     | stripped                                                   |
| Description / Description         | line.description             | stripped; missing -> ""                                    |
| Quantity / Quantity               | line.quantity                | abs(): a return carries positive quantities                |
| UnitPrice / Price                 | line.unit_price              | Decimal of the text as written; > 4 decimals rounded       |
|                                   | line.discount                | "0": the file has no per-line discount                     |

Stores, `store_for_country`: lowercase the country, fold accents to ASCII, turn every run of
other characters into "-":

| Country          | store_id             |
|------------------|----------------------|
| United Kingdom   | or-united-kingdom    |
| EIRE             | or-eire              |
| Channel Islands  | or-channel-islands   |
| RSA              | or-rsa               |
| Unspecified, ""  | or-unspecified       |

Rows that are not sales are left out by an explicit rule and counted in `ReplaySummary`:

- a negative unit price: the "Adjust bad debt" lines of the `A` invoices are bookkeeping;
- a negative quantity outside a `C` invoice: stock write-offs, nothing was sold;
- a zero quantity: nothing changed hands (the UCI file has none).

Everything else is kept: POST, DOT, M, BANK CHARGES, AMAZONFEE, zero-price lines and exact
duplicate rows (each duplicate is real money per the project's rule). A `C` invoice's rows,
including its "D"/"Discount" rows, become positive-quantity lines of a return. The shop books a
discount as a cancelled "D" row (all 77 "D" rows of the UCI file are in `C` invoices), so a
return line "D" x 1 at 27.50 is money handed back to the customer: exactly what the discount
was, and it lowers net revenue like any other return. Rows with a positive quantity inside a
`C` invoice are kept as return lines too and counted (the UCI file has none).

The contract allows at most `MAX_LINES_PER_SALE` lines per sale (2,000; the longest UCI invoice,
573585, has 1,114). An invoice with more would be sent as several sales `N:1`, `N:2`, ... in
file order, counted in `invoices_split`; the UCI file has none.
"""

from __future__ import annotations

import csv
import gzip
import re
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path
from typing import Literal, TextIO
from zoneinfo import ZoneInfo

from crm_shared.events import MAX_LINES_PER_SALE, Sale, SaleLine
from crm_shared.money import MAX_MONEY_DECIMALS

SHOP_TIME_ZONE = ZoneInfo("Europe/London")
TERMINAL_ID = "web-1"
CURRENCY = "GBP"
STORE_PREFIX = "or-"

Variant = Literal["online_retail", "online_retail_ii"]

# Our name for each column -> the column's name in each variant of the file.
COLUMNS: dict[Variant, dict[str, str]] = {
    "online_retail": {
        "invoice": "InvoiceNo",
        "sku": "StockCode",
        "description": "Description",
        "quantity": "Quantity",
        "invoice_date": "InvoiceDate",
        "unit_price": "UnitPrice",
        "customer": "CustomerID",
        "country": "Country",
    },
    "online_retail_ii": {
        "invoice": "Invoice",
        "sku": "StockCode",
        "description": "Description",
        "quantity": "Quantity",
        "invoice_date": "InvoiceDate",
        "unit_price": "Price",
        "customer": "Customer ID",
        "country": "Country",
    },
}

_PRICE_STEP = Decimal(1).scaleb(-MAX_MONEY_DECIMALS)
_NO_DISCOUNT = Decimal(0)
_PRICE_TEXT = re.compile(r"^-?\d{1,12}(\.\d+)?$")
_FLOAT_FORMATTED_ID = re.compile(r"^(\d+)\.0*$")
_NOT_SLUG = re.compile(r"[^a-z0-9]+")


@dataclass
class ReplaySummary:
    """What a load did, so every row of the file is accounted for in the replay's printout.

    Counts describe the invoices inside the `limit_invoices`/`until` window; `rows_read` is the
    whole file.
    """

    source: str
    variant: str  # "online_retail" | "online_retail_ii"
    rows_read: int = 0
    invoices_seen: int = 0
    sales: int = 0
    returns: int = 0
    lines: int = 0
    anonymous_sales: int = 0  # sales and returns without a member
    members: int = 0  # distinct member ids in emitted sales and returns
    excluded_negative_price_rows: int = 0
    excluded_stock_writeoff_rows: int = 0
    excluded_zero_quantity_rows: int = 0
    positive_quantity_rows_in_returns: int = 0  # kept as return lines
    invoices_fully_excluded: int = 0
    invoices_with_several_countries: int = 0
    invoices_with_several_customers: int = 0  # blank counts; the first non-blank one is the member
    invoices_split: int = 0  # more than MAX_LINES_PER_SALE lines: sent as several sales
    prices_rounded: int = 0
    stores: int = 0
    first_event: datetime | None = None
    last_event: datetime | None = None

    def as_table(self) -> list[tuple[str, str]]:
        def moment(value: datetime | None) -> str:
            return value.isoformat() if value is not None else "-"

        return [
            ("source", self.source),
            ("variant", self.variant),
            ("rows read", f"{self.rows_read:,}"),
            ("invoices seen", f"{self.invoices_seen:,}"),
            ("sales", f"{self.sales:,}"),
            ("returns", f"{self.returns:,}"),
            ("lines", f"{self.lines:,}"),
            ("anonymous sales and returns", f"{self.anonymous_sales:,}"),
            ("members", f"{self.members:,}"),
            ("stores", f"{self.stores:,}"),
            ("excluded: negative unit price rows", f"{self.excluded_negative_price_rows:,}"),
            ("excluded: stock write-off rows", f"{self.excluded_stock_writeoff_rows:,}"),
            ("excluded: zero quantity rows", f"{self.excluded_zero_quantity_rows:,}"),
            ("kept: positive quantity rows in returns", f"{self.positive_quantity_rows_in_returns:,}"),
            ("invoices fully excluded", f"{self.invoices_fully_excluded:,}"),
            ("invoices with several countries", f"{self.invoices_with_several_countries:,}"),
            ("invoices with several customers", f"{self.invoices_with_several_customers:,}"),
            ("invoices split into several sales", f"{self.invoices_split:,}"),
            ("prices rounded to 4 decimals", f"{self.prices_rounded:,}"),
            ("first event", moment(self.first_event)),
            ("last event", moment(self.last_event)),
        ]


def category_of_description(description: str) -> str | None:
    """Online Retail has no product categories: the last word of a description ("... T-LIGHT HOLDER")
    stands in for one where a test needs categories (after-sale care, category habits)."""
    words = description.split()
    return words[-1] if words else None


def store_for_country(country: str) -> str:
    """The store standing for one country's customers: "United Kingdom" -> "or-united-kingdom"."""
    ascii_name = unicodedata.normalize("NFKD", country).encode("ascii", "ignore").decode("ascii")
    slug = _NOT_SLUG.sub("-", ascii_name.lower()).strip("-")
    # A blank country is what the file already calls "Unspecified"; an id cannot be empty.
    slug = slug or "unspecified"
    return (STORE_PREFIX + slug)[:64].rstrip("-")


def detect_variant(header: list[str]) -> Variant:
    """Which file this is, from its header; an unknown header names what it lacks."""
    present = {name.strip() for name in header}
    missing_by_variant: dict[Variant, list[str]] = {}
    for variant, columns in COLUMNS.items():
        missing = [column for column in columns.values() if column not in present]
        if not missing:
            return variant
        missing_by_variant[variant] = missing
    explained = "; ".join(f"{variant} lacks {', '.join(missing)}" for variant, missing in missing_by_variant.items())
    raise ValueError(f"not an Online Retail CSV header {sorted(present)}: {explained}")


@dataclass
class _Invoice:
    number: str
    occurred_at: datetime
    country: str
    customer: str
    countries: set[str]
    customers: set[str]
    lines: list[SaleLine]
    negative_price_rows: int = 0
    stock_writeoff_rows: int = 0
    zero_quantity_rows: int = 0
    positive_quantity_return_rows: int = 0
    prices_rounded: int = 0


def load_sales(
    path: str | Path, *, limit_invoices: int | None = None, until: datetime | None = None
) -> tuple[list[Sale], ReplaySummary]:
    """Every invoice of the file as a `Sale`, sorted by (occurred_at, sale_id), with a summary.

    `until` keeps the invoices that happened strictly before it; `limit_invoices` then keeps the
    first N invoices (in time order) that produce a sale.
    """
    if until is not None and until.utcoffset() is None:
        raise ValueError("until must be timezone-aware: the invoices are Europe/London time")
    if limit_invoices is not None and limit_invoices < 0:
        raise ValueError("limit_invoices must not be negative")

    source = Path(path)
    with _open_text(source) as text:
        reader = csv.reader(text)
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"{source} is empty: no header line") from None
        variant = detect_variant(header)
        summary = ReplaySummary(source=str(source), variant=variant)
        invoices = _read_invoices(reader, header, variant, summary)

    ordered = sorted(invoices.values(), key=lambda invoice: (invoice.occurred_at, invoice.number))
    sales: list[Sale] = []
    members: set[str] = set()
    stores: set[str] = set()
    emitted_invoices = 0
    for invoice in ordered:
        if until is not None and invoice.occurred_at >= until:
            break
        if limit_invoices is not None and emitted_invoices >= limit_invoices:
            break
        summary.invoices_seen += 1
        summary.excluded_negative_price_rows += invoice.negative_price_rows
        summary.excluded_stock_writeoff_rows += invoice.stock_writeoff_rows
        summary.excluded_zero_quantity_rows += invoice.zero_quantity_rows
        summary.positive_quantity_rows_in_returns += invoice.positive_quantity_return_rows
        summary.prices_rounded += invoice.prices_rounded
        if not invoice.lines:
            summary.invoices_fully_excluded += 1
            continue
        emitted_invoices += 1
        summary.invoices_with_several_countries += len(invoice.countries) > 1
        summary.invoices_with_several_customers += len(invoice.customers) > 1
        parts = _as_sales(invoice)
        summary.invoices_split += len(parts) > 1
        for sale in parts:
            sales.append(sale)
            summary.lines += len(sale.lines)
            if sale.kind == "return":
                summary.returns += 1
            else:
                summary.sales += 1
            if sale.member_id is None:
                summary.anonymous_sales += 1
            else:
                members.add(sale.member_id)
            stores.add(sale.store_id)

    # Parts of a split invoice ("573585:2") may sort differently from their invoice number.
    sales.sort(key=lambda sale: (sale.occurred_at, sale.sale_id))
    summary.members = len(members)
    summary.stores = len(stores)
    if sales:
        summary.first_event = sales[0].occurred_at
        summary.last_event = sales[-1].occurred_at
    return sales, summary


@contextmanager
def _open_text(path: Path) -> Iterator[TextIO]:
    # Sniff the gzip magic number rather than trust the file name.
    with path.open("rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
    if compressed:
        with gzip.open(path, "rt", encoding="utf-8-sig", newline="") as unzipped:
            yield unzipped
    else:
        with path.open("r", encoding="utf-8-sig", newline="") as plain:
            yield plain


def _read_invoices(
    reader: Iterator[list[str]], header: list[str], variant: Variant, summary: ReplaySummary
) -> dict[str, _Invoice]:
    position = {name.strip(): index for index, name in enumerate(header)}
    columns = COLUMNS[variant]
    at_invoice = position[columns["invoice"]]
    at_sku = position[columns["sku"]]
    at_description = position[columns["description"]]
    at_quantity = position[columns["quantity"]]
    at_date = position[columns["invoice_date"]]
    at_price = position[columns["unit_price"]]
    at_customer = position[columns["customer"]]
    at_country = position[columns["country"]]
    width = len(header)

    invoices: dict[str, _Invoice] = {}
    moments: dict[str, datetime] = {}
    prices: dict[str, tuple[Decimal, bool]] = {}
    customers: dict[str, str] = {}
    # A SaleLine is frozen, so equal rows can share one fully validated instance: the UCI file
    # has ~69k distinct lines among ~540k rows, which takes the load from ~9 s to a few seconds.
    lines: dict[tuple[str, str, int, str], SaleLine] = {}
    row_number = 1
    for row in reader:
        row_number += 1
        if not row:
            continue
        if len(row) != width:
            raise ValueError(f"row {row_number}: {len(row)} fields where the header has {width}")
        summary.rows_read += 1
        number = row[at_invoice].strip()
        if not number:
            raise ValueError(f"row {row_number}: no invoice number")

        date_text = row[at_date]
        occurred_at = moments.get(date_text)
        if occurred_at is None:
            occurred_at = moments[date_text] = _parse_invoice_date(date_text, row_number)

        customer_text = row[at_customer]
        customer = customers.get(customer_text)
        if customer is None:
            customer = customers[customer_text] = _member_id(customer_text)

        country = row[at_country].strip()
        invoice = invoices.get(number)
        if invoice is None:
            invoice = invoices[number] = _Invoice(
                number=number,
                occurred_at=occurred_at,
                country=country,
                customer=customer,
                countries={country},
                customers={customer},
                lines=[],
            )
        else:
            invoice.occurred_at = min(invoice.occurred_at, occurred_at)
            invoice.countries.add(country)
            invoice.customers.add(customer)
            if customer and not invoice.customer:
                invoice.customer = customer

        quantity = _parse_quantity(row[at_quantity], row_number)
        price_text = row[at_price]
        parsed_price = prices.get(price_text)
        if parsed_price is None:
            parsed_price = prices[price_text] = _parse_unit_price(price_text, row_number)
        unit_price, rounded = parsed_price

        is_return = number.startswith("C")
        if unit_price < 0:
            invoice.negative_price_rows += 1
            continue
        if quantity == 0:
            invoice.zero_quantity_rows += 1
            continue
        if quantity < 0 and not is_return:
            invoice.stock_writeoff_rows += 1
            continue
        if quantity > 0 and is_return:
            invoice.positive_quantity_return_rows += 1
        invoice.prices_rounded += rounded
        sku = row[at_sku].strip()
        description = row[at_description].strip()
        line_key = (sku, description, abs(quantity), price_text)
        line = lines.get(line_key)
        if line is None:
            try:
                line = lines[line_key] = SaleLine(
                    sku=sku, description=description, quantity=abs(quantity), unit_price=unit_price, discount=_NO_DISCOUNT
                )
            except ValueError as exc:
                raise ValueError(f"row {row_number} does not fit the SaleLine contract: {exc}") from exc
        invoice.lines.append(line)
    return invoices


def _as_sales(invoice: _Invoice) -> list[Sale]:
    # Full pydantic validation (its lines were validated as they were read), so the replay never
    # sends an event the contract would refuse.
    kind: Literal["sale", "return"] = "return" if invoice.number.startswith("C") else "sale"
    chunks = [invoice.lines[start : start + MAX_LINES_PER_SALE] for start in range(0, len(invoice.lines), MAX_LINES_PER_SALE)]
    parts: list[Sale] = []
    for index, chunk in enumerate(chunks, start=1):
        sale_id = invoice.number if len(chunks) == 1 else f"{invoice.number}:{index}"
        try:
            parts.append(
                Sale(
                    sale_id=sale_id,
                    store_id=store_for_country(invoice.country),
                    terminal_id=TERMINAL_ID,
                    member_id=invoice.customer or None,
                    occurred_at=invoice.occurred_at,
                    currency=CURRENCY,
                    kind=kind,
                    lines=chunk,
                )
            )
        except ValueError as exc:
            raise ValueError(f"invoice {invoice.number} does not fit the Sale contract: {exc}") from exc
    return parts


def _parse_invoice_date(text: str, row_number: int) -> datetime:
    stripped = text.strip()
    try:
        if "/" in stripped:
            # The original xlsx export writes "12/1/2010 8:26" (month first, no padding).
            layout = "%m/%d/%Y %H:%M:%S" if stripped.count(":") == 2 else "%m/%d/%Y %H:%M"
            wall_time = datetime.strptime(stripped, layout)
        else:
            wall_time = datetime.fromisoformat(stripped)
    except ValueError:
        raise ValueError(
            f"row {row_number}: InvoiceDate {text!r} is neither YYYY-MM-DD HH:MM:SS nor M/D/YYYY H:MM"
        ) from None
    if wall_time.tzinfo is not None:
        raise ValueError(f"row {row_number}: InvoiceDate {text!r} carries an offset; the file holds London wall time")
    # fold=0: an hour that happens twice in October reads as the first (summer time) one.
    return wall_time.replace(tzinfo=SHOP_TIME_ZONE)


def _member_id(text: str) -> str:
    stripped = text.strip()
    # pandas writes Online Retail II customer ids as floats ("13085.0").
    float_formatted = _FLOAT_FORMATTED_ID.match(stripped)
    return float_formatted.group(1) if float_formatted else stripped


def _parse_quantity(text: str, row_number: int) -> int:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        as_decimal = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"row {row_number}: Quantity {text!r} is not a number") from None
    if as_decimal != as_decimal.to_integral_value():
        raise ValueError(f"row {row_number}: Quantity {text!r} is not a whole number")
    return int(as_decimal)


def _parse_unit_price(text: str, row_number: int) -> tuple[Decimal, bool]:
    stripped = text.strip()
    # Straight from the text, never through float, so 0.001 stays 0.001.
    if not _PRICE_TEXT.match(stripped):
        raise ValueError(f"row {row_number}: unit price {text!r} is not a plain decimal number")
    price = Decimal(stripped)
    exponent = price.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > MAX_MONEY_DECIMALS:
        return price.quantize(_PRICE_STEP, rounding=ROUND_HALF_EVEN), True
    return price, False
