"""Request bodies refuse what would overflow further in: a 422 naming the field, never a 500."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from replenishment.api import AckIn, ReceiptIn, ShipNotice, StockCount

RECEIPT = {"receipt_id": "r1", "store_id": "s1", "lines": [{"sku": "A", "quantity": 1}]}
COUNT = {"count_id": "c1", "store_id": "s1", "sku": "A", "counted": 3}


@pytest.mark.parametrize("when", ["9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00",
                                  "1989-12-31T23:59:59+00:00", "2201-01-01T00:00:00+00:00"])
@pytest.mark.parametrize(("model", "body", "field"), [
    (ReceiptIn, RECEIPT, "received_at"), (StockCount, COUNT, "counted_at"), (AckIn, {"decision": "accepted"}, "at"),
    (ShipNotice, {}, "at")])
def test_a_time_outside_the_plausible_years_is_refused_naming_the_field(model: type, body: dict, field: str,
                                                                        when: str) -> None:
    with pytest.raises(ValidationError) as refused:
        model.model_validate({**body, field: when})
    assert [error["loc"] for error in refused.value.errors()] == [(field,)]
    assert "between 1990 and 2200" in refused.value.errors()[0]["msg"]


@pytest.mark.parametrize("when", ["1990-01-01T00:00:00+14:00", "2200-12-31T23:59:59-12:00", "2011-01-08T09:00:00Z"])
def test_a_time_inside_the_years_is_accepted(when: str) -> None:
    assert ReceiptIn.model_validate({**RECEIPT, "received_at": when}).received_at.year in (1990, 2200, 2011)
    assert StockCount.model_validate({**COUNT, "counted_at": when}).counted_at is not None
