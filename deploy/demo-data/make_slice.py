"""Write the demo slice: every row of UCI Online Retail whose InvoiceDate is in December 2010.

    python deploy/demo-data/make_slice.py [--source PATH] [--output PATH]

The output keeps the original columns, row order and CSV format (UTF-8, "\\n" line endings,
quoting only where needed) and is gzipped with mtime 0 and no file name, so running the script
again gives the same bytes.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "datasets" / "online_retail.csv.gz"
DEFAULT_OUTPUT = HERE / "online_retail_2010-12.csv.gz"
MONTH = "2010-12"
MAX_BYTES = 2_000_000  # small enough to ship in the repository


def write_slice(source: Path, output: Path) -> tuple[int, int]:
    """Copy the month's rows; returns (rows, invoices) written."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    invoices: set[str] = set()
    rows = 0
    with gzip.open(source, "rt", encoding="utf-8", newline="") as text:
        reader = csv.reader(text)
        header = next(reader)
        if "InvoiceDate" not in header or "InvoiceNo" not in header:
            raise SystemExit(f"{source} is not the UCI Online Retail CSV: header {header}")
        at_date = header.index("InvoiceDate")
        at_invoice = header.index("InvoiceNo")
        writer.writerow(header)
        for row in reader:
            # The file writes dates as YYYY-MM-DD HH:MM:SS, so the month is the first 7 characters.
            if row[at_date].startswith(MONTH + "-"):
                writer.writerow(row)
                rows += 1
                invoices.add(row[at_invoice])
    with output.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as zipped:
        zipped.write(buffer.getvalue().encode("utf-8"))
    return rows, len(invoices)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    arguments = parser.parse_args()
    rows, invoices = write_slice(arguments.source, arguments.output)
    size = arguments.output.stat().st_size
    digest = hashlib.sha256(arguments.output.read_bytes()).hexdigest()
    print(f"{arguments.output}: {rows:,} rows, {invoices:,} invoices, {size:,} bytes, sha256 {digest}")
    if size >= MAX_BYTES:
        raise SystemExit(f"the slice is {size:,} bytes, over the {MAX_BYTES:,} byte budget")


if __name__ == "__main__":
    main()
