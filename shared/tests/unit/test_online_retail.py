"""The UCI Online Retail loader: what a replay of the shop's history would send as `Sale` events."""

from __future__ import annotations

import gzip
import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from crm_shared.datasets.online_retail import ReplaySummary, load_sales, store_for_country
from crm_shared.events import MAX_LINES_PER_SALE, Sale

REPO_ROOT = Path(__file__).resolve().parents[3]
DATASETS = REPO_ROOT.parent / "shared" / "datasets"

ORIGINAL_HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"
RETAIL_II_HEADER = "Invoice,StockCode,Description,Quantity,InvoiceDate,Price,Customer ID,Country"

SHOP_CSV = f"""{ORIGINAL_HEADER}
536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER ,6,2010-12-01 08:26:00,2.55,17850,United Kingdom
536365,71053,WHITE METAL LANTERN,6,2010-12-01 08:26:00,3.39,17850,United Kingdom
536365,71053,WHITE METAL LANTERN,6,2010-12-01 08:26:00,3.39,17850,United Kingdom
C536379,D,Discount,-1,2010-12-01 09:41:00,27.50,14527,United Kingdom
C536383,35004C,SET OF 3 COLOURED  FLYING DUCKS,-1,2010-12-01 09:49:00,4.65,15311,United Kingdom
536544,21773,"DECORATIVE ROSE BATHROOM BOTTLE, LARGE",1,2010-12-01 14:32:00,2.51,,United Kingdom
536544,POST,,1,2010-12-01 14:32:00,0,,United Kingdom
536589,21777,,-10,2010-12-01 16:50:00,0,,United Kingdom
536600,21779,CHALKBOARD,-3,2010-12-01 17:00:00,1.25,,United Kingdom
536600,21780,CHALKBOARD SMALL,2,2010-12-01 17:00:00,0.001,,United Kingdom
536700,22001,GIFT TAG,0,2010-12-01 17:30:00,0.85,12583,France
A563185,B,Adjust bad debt,1,2011-08-12 14:50:00,11062.06,,United Kingdom
A563186,B,Adjust bad debt,1,2011-08-12 14:51:00,-11062.06,,United Kingdom
562000,22423,REGENCY CAKESTAND 3 TIER,2,2011-07-04 10:05:00,12.75,12347,Iceland
562000,22424,ENAMEL BREAD BIN CREAM,1,2011-07-04 10:04:00,10.95,12347,Iceland
562100,84879,ASSORTED COLOUR BIRD ORNAMENT,8,2011-07-05 11:00:00,1.69,14911,EIRE
562100,22720,SET OF 3 CAKE TINS PANTRY DESIGN,3,2011-07-05 11:00:00,4.95,14911,United Kingdom
"""


def write_csv(tmp_path: Path, text: str, *, compressed: bool) -> Path:
    if compressed:
        path = tmp_path / "retail.csv.gz"
        path.write_bytes(gzip.compress(text.encode("utf-8"), mtime=0))
    else:
        path = tmp_path / "retail.csv"
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(params=[False, True], ids=["plain", "gzip"])
def shop(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[dict[str, Sale], ReplaySummary]:
    sales, summary = load_sales(write_csv(tmp_path, SHOP_CSV, compressed=request.param))
    return {sale.sale_id: sale for sale in sales}, summary


def test_an_invoice_with_several_rows_is_one_sale_keeping_duplicate_rows(
    shop: tuple[dict[str, Sale], ReplaySummary],
) -> None:
    sales, _ = shop
    sale = sales["536365"]
    assert sale.kind == "sale"
    assert sale.member_id == "17850"
    assert sale.store_id == "or-united-kingdom"
    assert sale.terminal_id == "web-1"
    assert sale.currency == "GBP"
    assert [(line.sku, line.quantity, line.unit_price) for line in sale.lines] == [
        ("85123A", 6, Decimal("2.55")),
        ("71053", 6, Decimal("3.39")),
        ("71053", 6, Decimal("3.39")),
    ]
    assert sale.lines[0].description == "WHITE HANGING HEART T-LIGHT HOLDER"
    assert sale.total == Decimal("55.98")


def test_a_c_invoice_is_a_return_with_positive_quantities(shop: tuple[dict[str, Sale], ReplaySummary]) -> None:
    sales, summary = shop
    discount_return = sales["C536379"]
    assert discount_return.kind == "return"
    assert [(line.sku, line.quantity, line.unit_price) for line in discount_return.lines] == [("D", 1, Decimal("27.50"))]
    assert discount_return.total == Decimal("-27.50")
    assert sales["C536383"].lines[0].quantity == 1
    assert summary.returns == 2
    assert summary.positive_quantity_rows_in_returns == 0


def test_a_blank_customer_is_an_anonymous_sale_and_a_missing_description_is_empty(
    shop: tuple[dict[str, Sale], ReplaySummary],
) -> None:
    sales, summary = shop
    anonymous = sales["536544"]
    assert anonymous.member_id is None
    assert anonymous.partition_key == "or-united-kingdom"
    assert [line.description for line in anonymous.lines] == ["DECORATIVE ROSE BATHROOM BOTTLE, LARGE", ""]
    assert summary.anonymous_sales == 3  # 536544, 536600 and the positive bad-debt adjustment A563185


def test_rows_that_are_not_sales_are_excluded_and_counted(shop: tuple[dict[str, Sale], ReplaySummary]) -> None:
    sales, summary = shop
    assert "A563186" not in sales  # the negative "Adjust bad debt"
    assert "536589" not in sales  # a stock write-off alone on its invoice
    assert "536700" not in sales  # a zero quantity
    assert [line.sku for line in sales["536600"].lines] == ["21780"]  # its write-off row is gone
    assert sales["A563185"].total == Decimal("11062.06")  # a positive adjustment is not a rule's business
    assert summary.excluded_negative_price_rows == 1
    assert summary.excluded_stock_writeoff_rows == 2
    assert summary.excluded_zero_quantity_rows == 1
    assert summary.invoices_fully_excluded == 3
    assert summary.rows_read == 17
    assert summary.lines == 17 - 4
    assert summary.invoices_seen == 11
    assert summary.sales + summary.returns == 11 - 3


def test_a_price_of_a_tenth_of_a_penny_is_kept_exactly(shop: tuple[dict[str, Sale], ReplaySummary]) -> None:
    sales, summary = shop
    line = sales["536600"].lines[0]
    assert line.unit_price == Decimal("0.001")
    assert line.model_dump(mode="json")["unit_price"] == "0.001"
    assert summary.prices_rounded == 0


def test_the_earliest_invoice_date_wins_in_london_time(shop: tuple[dict[str, Sale], ReplaySummary]) -> None:
    sales, _ = shop
    summer = sales["562000"].occurred_at
    assert summer.isoformat() == "2011-07-04T10:04:00+01:00"
    assert summer.utcoffset() == timedelta(hours=1)
    winter = sales["536365"].occurred_at
    assert winter.isoformat() == "2010-12-01T08:26:00+00:00"
    assert winter == datetime(2010, 12, 1, 8, 26, tzinfo=UTC)


def test_an_invoice_with_several_countries_takes_its_first_rows_country(
    shop: tuple[dict[str, Sale], ReplaySummary],
) -> None:
    sales, summary = shop
    assert sales["562100"].store_id == "or-eire"
    assert len(sales["562100"].lines) == 2
    assert summary.invoices_with_several_countries == 1


def test_the_summary_describes_what_was_sent(shop: tuple[dict[str, Sale], ReplaySummary]) -> None:
    sales, summary = shop
    assert summary.variant == "online_retail"
    assert summary.sales == 6
    assert summary.members == 5  # 17850, 14527, 15311, 12347, 14911
    assert summary.stores == 3  # United Kingdom, Iceland, EIRE
    assert summary.first_event == datetime(2010, 12, 1, 8, 26, tzinfo=UTC)
    assert summary.last_event == sales["A563185"].occurred_at
    table = dict(summary.as_table())
    assert table["lines"] == "13"
    assert table["excluded: stock write-off rows"] == "2"


def test_sales_come_sorted_and_survive_the_wire(tmp_path: Path) -> None:
    sales, _ = load_sales(write_csv(tmp_path, SHOP_CSV, compressed=True))
    assert sales == sorted(sales, key=lambda sale: (sale.occurred_at, sale.sale_id))
    for sale in sales:
        assert Sale.model_validate_json(sale.model_dump_json()) == sale


def test_online_retail_ii_columns_and_float_formatted_customer_ids(tmp_path: Path) -> None:
    text = f"""{RETAIL_II_HEADER}
489434,85048,15CM CHRISTMAS GLASS BALL 20 LIGHTS,12,2009-12-01 07:45:00,6.95,13085.0,United Kingdom
489434,79323P,PINK CHERRY LIGHTS,12,2009-12-01 07:45:00,6.75,13085.0,United Kingdom
C489449,22087,PAPER BUNTING WHITE LACE,-12,2009-12-01 10:33:00,2.95,16321.0,Australia
489450,21000,GIFT BAG,1,2009-12-01 10:40:00,0.65,,United Kingdom
"""
    sales, summary = load_sales(write_csv(tmp_path, text, compressed=False))
    assert summary.variant == "online_retail_ii"
    by_id = {sale.sale_id: sale for sale in sales}
    assert by_id["489434"].member_id == "13085"
    assert by_id["C489449"].member_id == "16321"
    assert by_id["C489449"].kind == "return"
    assert by_id["C489449"].store_id == "or-australia"
    assert by_id["489450"].member_id is None
    assert by_id["489434"].total == Decimal("164.40")


def test_dates_from_the_original_xlsx_export(tmp_path: Path) -> None:
    text = f"""{ORIGINAL_HEADER}
536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,12/1/2010 8:26,2.55,17850,United Kingdom
551000,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,4/26/2011 13:05,2.55,17850,United Kingdom
"""
    sales, _ = load_sales(write_csv(tmp_path, text, compressed=False))
    assert [sale.occurred_at.isoformat() for sale in sales] == ["2010-12-01T08:26:00+00:00", "2011-04-26T13:05:00+01:00"]


def test_an_unknown_header_names_the_missing_columns(tmp_path: Path) -> None:
    text = "InvoiceNo,StockCode,Description,Qty,InvoiceDate,Price,CustomerID,Country\n1,A,B,1,2010-12-01 08:26:00,1,,UK\n"
    with pytest.raises(ValueError, match="online_retail lacks Quantity, UnitPrice") as raised:
        load_sales(write_csv(tmp_path, text, compressed=False))
    assert "online_retail_ii lacks Invoice, Quantity, Customer ID" in str(raised.value)


def test_a_price_with_more_than_four_decimals_is_rounded_half_even_and_counted(tmp_path: Path) -> None:
    text = f"""{ORIGINAL_HEADER}
536365,10001,TINY THING,1000,2010-12-01 08:26:00,0.00015,17850,United Kingdom
536365,10002,TINY THING,1000,2010-12-01 08:26:00,0.00025,17850,United Kingdom
"""
    sales, summary = load_sales(write_csv(tmp_path, text, compressed=False))
    assert [line.unit_price for line in sales[0].lines] == [Decimal("0.0002"), Decimal("0.0002")]
    assert summary.prices_rounded == 2


def test_positive_rows_inside_a_return_stay_return_lines_and_are_counted(tmp_path: Path) -> None:
    text = f"""{ORIGINAL_HEADER}
C536379,22001,GIFT TAG,-2,2010-12-01 09:41:00,0.85,14527,United Kingdom
C536379,22002,GIFT BOX,3,2010-12-01 09:41:00,1.25,14527,United Kingdom
"""
    sales, summary = load_sales(write_csv(tmp_path, text, compressed=False))
    assert [line.quantity for line in sales[0].lines] == [2, 3]
    assert sales[0].kind == "return"
    assert summary.positive_quantity_rows_in_returns == 1


def test_an_invoice_longer_than_the_contract_allows_is_sent_in_parts(tmp_path: Path) -> None:
    rows = [f"573585,{10000 + n},THING,1,2011-10-31 14:41:00,1.00,,United Kingdom" for n in range(MAX_LINES_PER_SALE + 5)]
    sales, summary = load_sales(write_csv(tmp_path, "\n".join([ORIGINAL_HEADER, *rows]) + "\n", compressed=True))
    assert [(sale.sale_id, len(sale.lines)) for sale in sales] == [("573585:1", MAX_LINES_PER_SALE), ("573585:2", 5)]
    assert summary.invoices_split == 1
    assert summary.invoices_seen == 1
    assert sum(sale.total for sale in sales) == Decimal(MAX_LINES_PER_SALE + 5)


def test_until_and_limit_pick_the_earliest_invoices(tmp_path: Path) -> None:
    path = write_csv(tmp_path, SHOP_CSV, compressed=False)
    before_summer, summary = load_sales(path, until=datetime(2011, 1, 1, tzinfo=UTC))
    assert [sale.sale_id for sale in before_summer] == ["536365", "C536379", "C536383", "536544", "536600"]
    assert summary.invoices_seen == 7  # with the write-off 536589 and the zero-quantity 536700
    first_two, summary = load_sales(path, limit_invoices=2)
    assert [sale.sale_id for sale in first_two] == ["536365", "C536379"]
    assert summary.sales == 1 and summary.returns == 1
    with pytest.raises(ValueError, match="timezone-aware"):
        load_sales(path, until=datetime(2011, 1, 1))


@pytest.mark.parametrize(
    ("country", "store_id"),
    [
        ("United Kingdom", "or-united-kingdom"),
        ("EIRE", "or-eire"),
        ("Channel Islands", "or-channel-islands"),
        ("European Community", "or-european-community"),
        ("Côte d'Ivoire", "or-cote-d-ivoire"),
        ("", "or-unspecified"),
    ],
)
def test_one_store_per_country(country: str, store_id: str) -> None:
    assert store_for_country(country) == store_id


def test_the_real_file_matches_an_independent_pandas_count() -> None:
    real_file = DATASETS / "online_retail.csv.gz"
    if not DATASETS.is_dir():
        pytest.skip("../shared/datasets is absent: real-data check skipped")
    pd = pytest.importorskip("pandas")

    rows = pd.read_csv(real_file, dtype=str, keep_default_na=False)
    quantity = rows["Quantity"].astype(int)
    is_return = rows["InvoiceNo"].str.startswith("C")
    negative_price = rows["UnitPrice"].astype(float) < 0
    writeoff = ~negative_price & (quantity < 0) & ~is_return
    zero_quantity = ~negative_price & (quantity == 0)
    kept = rows[~(negative_price | writeoff | zero_quantity)]
    lines_per_invoice = kept.groupby("InvoiceNo").size()
    extra_parts = int(sum(math.ceil(n / MAX_LINES_PER_SALE) - 1 for n in lines_per_invoice))
    customers = kept.loc[kept["CustomerID"] != "", "CustomerID"].nunique()
    kept_value = sum(
        (Decimal(q) * Decimal(p) for q, p in zip(kept["Quantity"], kept["UnitPrice"], strict=True)), Decimal(0)
    )
    earliest = kept.groupby("InvoiceNo")["InvoiceDate"].min()  # every row of these invoices is kept

    sales, summary = load_sales(real_file)

    assert summary.rows_read == len(rows) == 541_909
    assert summary.excluded_negative_price_rows == int(negative_price.sum()) == 2
    assert summary.excluded_stock_writeoff_rows == int(writeoff.sum()) == 1_336
    assert summary.excluded_zero_quantity_rows == int(zero_quantity.sum())
    assert summary.sales + summary.returns == len(lines_per_invoice) + extra_parts
    assert summary.returns == kept.loc[is_return, "InvoiceNo"].nunique()
    assert summary.invoices_fully_excluded == rows["InvoiceNo"].nunique() - len(lines_per_invoice)
    assert summary.lines == len(kept)
    assert summary.members == customers == 4_372
    assert summary.stores == kept["Country"].nunique()
    assert summary.prices_rounded == 0
    assert sum((sale.total for sale in sales), Decimal(0)) == kept_value

    # A split invoice's parts ("573585:2") all carry their invoice's time.
    wall_times = {sale.sale_id.split(":")[0]: sale.occurred_at.strftime("%Y-%m-%d %H:%M:%S") for sale in sales}
    assert wall_times == earliest.to_dict()
