"""Real public retail datasets, mapped onto the event contract (see each module's docstring)."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any


def header_of(path: str | Path) -> list[str]:
    path = Path(path)
    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as handle:
        return [name.strip() for name in handle.readline().strip().split(",")]


def load_sales_file(path: str | Path) -> tuple[list[Any], Any]:
    """Sales from either dataset, recognised by its header: UCI Online Retail (I or II) or Complete Journey."""
    if "basket_id" in header_of(path):
        from crm_shared.datasets.completejourney import load_transactions

        return load_transactions(path)
    from crm_shared.datasets.online_retail import load_sales

    return load_sales(path)
