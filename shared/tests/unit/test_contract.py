"""The event contract: what a terminal may send, what goes on the wire, and what a consumer refuses."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest
from crm_shared.events import (
    EVENT_NAMESPACE,
    MAX_LINES_PER_SALE,
    Envelope,
    Sale,
    SaleLine,
    event_uuid,
    sale_event_id,
    sale_recorded,
)
from crm_shared.serde import PoisonMessage, decode, encode
from crm_shared.topics import POS_SALES, all_topic_names
from pydantic import ValidationError


def sale_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "sale_id": "536365",
        "store_id": "uk-01",
        "terminal_id": "till-3",
        "member_id": "17850",
        "occurred_at": "2010-12-01T08:26:00+00:00",
        "currency": "GBP",
        "lines": [
            {"sku": "85123A", "description": "WHITE HANGING HEART T-LIGHT HOLDER", "quantity": 6,
             "unit_price": "2.55"},
            {"sku": "71053", "description": "WHITE METAL LANTERN", "quantity": 2, "unit_price": "3.39",
             "discount": "0.78"},
        ],
    }
    body.update(overrides)
    return body


def line_body(**overrides: Any) -> dict[str, Any]:
    line: dict[str, Any] = {"sku": "85123A", "quantity": 2, "unit_price": "1.50"}
    line.update(overrides)
    return line


def with_line(**line_overrides: Any) -> dict[str, Any]:
    return sale_body(lines=[line_body(**line_overrides)])


def refused_at(body: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Validate `body` as a sale that must be refused; return the `loc` of every error."""
    with pytest.raises(ValidationError) as caught:
        Sale.model_validate(body)
    return [tuple(error["loc"]) for error in caught.value.errors()]


def refused_json_at(raw: bytes) -> list[tuple[Any, ...]]:
    with pytest.raises(ValidationError) as caught:
        Sale.model_validate_json(raw)
    return [tuple(error["loc"]) for error in caught.value.errors()]


# --- round trip --------------------------------------------------------------------------------


def test_a_sale_round_trips_through_the_wire_unchanged() -> None:
    envelope = sale_recorded(Sale.model_validate(sale_body()), source="pos-gateway")

    decoded = decode(Envelope[Sale], encode(envelope))

    assert decoded == envelope
    assert decoded.event_type == "SaleRecorded"
    assert decoded.payload.total == 6 * Decimal("2.55") + 2 * Decimal("3.39") - Decimal("0.78")


def test_money_stays_decimal_and_travels_as_a_string() -> None:
    envelope = sale_recorded(Sale.model_validate(sale_body()), source="pos-gateway")

    wire = orjson.loads(encode(envelope))
    decoded = decode(Envelope[Sale], encode(envelope))

    assert wire["payload"]["lines"][0]["unit_price"] == "2.55"
    assert wire["payload"]["lines"][1]["discount"] == "0.78"
    assert wire["payload"]["lines"][0]["discount"] == "0"
    line = decoded.payload.lines[0]
    assert isinstance(line.unit_price, Decimal) and line.unit_price == Decimal("2.55")
    assert isinstance(decoded.payload.total, Decimal)


def test_a_tenth_of_a_penny_is_kept_exactly() -> None:
    sale = Sale.model_validate(with_line(unit_price="0.001", quantity=3))

    decoded = decode(Envelope[Sale], encode(sale_recorded(sale, source="replay")))

    assert decoded.payload.lines[0].unit_price == Decimal("0.001")
    assert decoded.payload.total == Decimal("0.003")
    assert orjson.loads(encode(sale))["lines"][0]["unit_price"] == "0.001"


# --- money refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize("raw_price", [b"2.5", b"3"], ids=["json-float", "json-int"])
def test_a_price_sent_as_a_json_number_is_refused(raw_price: bytes) -> None:
    raw = orjson.dumps(with_line()).replace(b'"unit_price":"1.50"', b'"unit_price":' + raw_price)
    assert b'"unit_price":' + raw_price in raw

    assert ("lines", 0, "unit_price") in refused_json_at(raw)


@pytest.mark.parametrize("price", [2.5, 3], ids=["float", "int"])
def test_a_price_given_as_a_python_number_is_refused(price: float) -> None:
    assert refused_at(with_line(unit_price=price)) == [("lines", 0, "unit_price")]


def test_a_price_with_five_decimals_is_refused() -> None:
    assert refused_at(with_line(unit_price="1.00001")) == [("lines", 0, "unit_price")]


def test_a_price_seen_before_is_judged_as_it_was_the_first_time() -> None:
    """Accepted price strings are remembered (decoding speed); the refusals must not be."""
    for _ in range(2):
        assert Sale.model_validate(with_line(unit_price="2.55")).lines[0].unit_price == Decimal("2.55")
        assert refused_at(with_line(unit_price="1.00001")) == [("lines", 0, "unit_price")]
        assert refused_at(with_line(unit_price="-2.55")) == [("lines", 0, "unit_price")]  # the sign: after parsing
        assert refused_at(with_line(unit_price="2.5e1")) == [("lines", 0, "unit_price")]


def test_a_negative_price_is_refused() -> None:
    assert refused_at(with_line(unit_price="-1.50")) == [("lines", 0, "unit_price")]


@pytest.mark.parametrize("field", ["unit_price", "discount"])
@pytest.mark.parametrize("amount", [Decimal("NaN"), Decimal("sNaN"), Decimal("Infinity"), Decimal("-Infinity")])
def test_a_decimal_that_is_no_amount_is_refused_where_it_is(field: str, amount: Decimal) -> None:
    # Amounts handed over as Decimals by our own code: refused as a validation error on the field,
    # never an arithmetic exception from the sign or line-value checks.
    with pytest.raises(ValidationError) as caught:
        SaleLine.model_validate({**line_body(quantity=2, unit_price="1.50"), field: amount})
    assert [error["loc"] for error in caught.value.errors()] == [(field,)]


def test_a_negative_discount_is_refused() -> None:
    assert refused_at(with_line(discount="-0.50")) == [("lines", 0, "discount")]


def test_a_discount_bigger_than_the_line_names_the_discount() -> None:
    assert refused_at(with_line(quantity=2, unit_price="1.50", discount="3.01")) == [("lines", 0, "discount")]


def test_a_discount_bigger_than_the_line_is_refused() -> None:
    # The line must not be accepted, and the message says by how much it is over.
    with pytest.raises(ValidationError, match=r"more than the line's value 3\.00"):
        SaleLine.model_validate(line_body(quantity=2, unit_price="1.50", discount="3.01"))
    assert SaleLine.model_validate(line_body(quantity=2, unit_price="1.50", discount="3.00")).net == 0


# --- quantity, currency, time ------------------------------------------------------------------


@pytest.mark.parametrize("quantity", [0, -1, 2.0, 2.5, "3", True], ids=["zero", "negative", "float-whole",
                                                                        "float", "string", "bool"])
def test_a_quantity_that_is_not_a_positive_integer_is_refused(quantity: Any) -> None:
    assert refused_at(with_line(quantity=quantity)) == [("lines", 0, "quantity")]


@pytest.mark.parametrize("currency", ["XXX", "gbp", "GB", "POUND"])
def test_an_unknown_currency_is_refused(currency: str) -> None:
    assert refused_at(sale_body(currency=currency)) == [("currency",)]


def test_a_time_without_a_time_zone_is_refused() -> None:
    assert refused_at(sale_body(occurred_at="2010-12-01T08:26:00")) == [("occurred_at",)]


@pytest.mark.parametrize("occurred_at", [
    "0001-01-01T00:00:00+05:00",
    "0001-01-01T00:00:00-05:00",
    "9999-12-31T23:59:59-05:00",
    "9999-12-31T23:59:59+05:00",
])
def test_an_implausible_year_is_a_validation_error_not_an_overflow(occurred_at: str) -> None:
    assert refused_at(sale_body(occurred_at=occurred_at)) == [("occurred_at",)]
    assert refused_json_at(orjson.dumps(sale_body(occurred_at=occurred_at))) == [("occurred_at",)]


# --- shape -------------------------------------------------------------------------------------


def test_a_sale_without_lines_is_refused() -> None:
    assert refused_at(sale_body(lines=[])) == [("lines",)]


def test_a_sale_with_too_many_lines_is_refused_but_the_maximum_is_accepted() -> None:
    assert refused_at(sale_body(lines=[line_body()] * (MAX_LINES_PER_SALE + 1))) == [("lines",)]
    assert len(Sale.model_validate(sale_body(lines=[line_body()] * MAX_LINES_PER_SALE)).lines) == MAX_LINES_PER_SALE


def test_an_unknown_field_is_refused_not_ignored() -> None:
    assert refused_at(sale_body(tip="1.00")) == [("tip",)]
    assert refused_at(with_line(colour="red")) == [("lines", 0, "colour")]


def test_original_sale_id_on_a_sale_names_the_field() -> None:
    assert refused_at(sale_body(kind="sale", original_sale_id="536000")) == [("original_sale_id",)]


def test_original_sale_id_on_a_sale_is_refused_and_allowed_on_a_return() -> None:
    with pytest.raises(ValidationError, match="is only allowed on a return"):
        Sale.model_validate(sale_body(kind="sale", original_sale_id="536000"))
    ret = Sale.model_validate(sale_body(sale_id="C536379", kind="return", original_sale_id="536365"))
    assert ret.original_sale_id == "536365"


@pytest.mark.parametrize("field,value", [
    ("sku", "A\x00B"),
    ("sku", "85123A\x07"),
    ("sku", "85\x7f123"),
    ("description", "WHITE\x00LANTERN"),
    ("description", "two\nlines"),
    ("description", "bell\x1b[31m"),
])
def test_control_characters_in_sku_or_description_are_refused(field: str, value: str) -> None:
    assert refused_at(with_line(**{field: value})) == [("lines", 0, field)]


@pytest.mark.parametrize("sku", ["", "   ", "\t \n"])
def test_a_blank_sku_is_refused(sku: str) -> None:
    assert refused_at(with_line(sku=sku)) == [("lines", 0, "sku")]


def test_surrounding_spaces_are_trimmed_from_a_sku() -> None:
    assert Sale.model_validate(with_line(sku="  85123A ")).lines[0].sku == "85123A"


@pytest.mark.parametrize("field,value", [
    ("sale_id", "536 365"),
    ("sale_id", "536/365"),
    ("store_id", "uk/01"),
    ("terminal_id", "till 3"),
    ("member_id", "178 50"),
    ("member_id", "../17850"),
    ("sale_id", ""),
    ("sale_id", "x" * 65),
])
def test_an_identifier_with_spaces_slashes_or_a_bad_length_is_refused(field: str, value: str) -> None:
    assert refused_at(sale_body(**{field: value})) == [(field,)]


def test_a_return_original_id_with_a_slash_is_refused() -> None:
    assert refused_at(sale_body(kind="return", original_sale_id="536/365")) == [("original_sale_id",)]


# --- identity, key, totals ---------------------------------------------------------------------


@pytest.mark.parametrize("identity", ["", "sale/uk-01/till-3/536365", "need/uk-01/85123A/2011-03-04",
                                      "offer/café-ü-€", "x" * 5000])
def test_event_ids_are_rfc_4122_version_5_ids_in_the_event_namespace(identity: str) -> None:
    # event_uuid is a faster uuid5: the ids already in every database and topic must not change.
    assert event_uuid(identity) == uuid.uuid5(EVENT_NAMESPACE, identity)
    assert event_uuid(identity).version == 5


def test_the_same_sale_always_gets_the_same_event_id() -> None:
    first = Sale.model_validate(sale_body())
    again = Sale.model_validate(sale_body(occurred_at="2010-12-01T09:26:00+01:00"))

    assert first.event_id == again.event_id == sale_event_id("uk-01", "till-3", "536365")
    assert sale_recorded(first, source="pos-gateway").event_id == sale_recorded(again, source="replay").event_id


def test_a_copy_with_another_sale_id_gets_that_sale_id_s_event_id() -> None:
    sale = Sale.model_validate(sale_body())
    assert sale.event_id == sale_event_id("uk-01", sale.terminal_id, "536365")  # now cached on the instance

    copied = sale.model_copy(update={"sale_id": "536365-n1"})

    assert copied.event_id == sale_event_id("uk-01", sale.terminal_id, "536365-n1") != sale.event_id
    assert sale_recorded(copied, source="replay").event_id == copied.event_id


def test_a_different_terminal_or_store_gives_a_different_event_id() -> None:
    base = sale_event_id("uk-01", "till-3", "536365")

    assert sale_event_id("uk-01", "till-4", "536365") != base
    assert sale_event_id("uk-02", "till-3", "536365") != base
    assert sale_event_id("uk-01", "till-3", "536366") != base
    assert Sale.model_validate(sale_body(terminal_id="till-4")).event_id != base


def test_a_members_sales_are_keyed_by_member_and_anonymous_sales_by_store() -> None:
    member_sale = sale_recorded(Sale.model_validate(sale_body(member_id="17850")), source="pos-gateway")
    anonymous = sale_recorded(Sale.model_validate(sale_body(member_id=None)), source="pos-gateway")

    assert member_sale.key == "17850"
    assert anonymous.key == "uk-01"


def test_a_return_has_a_negative_total_and_its_own_event_type() -> None:
    ret = Sale.model_validate(sale_body(sale_id="C536379", kind="return", lines=[
        line_body(quantity=2, unit_price="27.50", discount="5.00")]))

    assert ret.total == Decimal("-50.00")
    assert sale_recorded(ret, source="pos-gateway").event_type == "ReturnRecorded"


# --- decode ------------------------------------------------------------------------------------


def envelope_json(**overrides: Any) -> dict[str, Any]:
    envelope = orjson.loads(encode(sale_recorded(Sale.model_validate(sale_body()), source="pos-gateway")))
    envelope.update(overrides)
    return envelope


def test_decode_refuses_bytes_that_are_not_json() -> None:
    with pytest.raises(PoisonMessage) as caught:
        decode(Envelope[Sale], b"\x00\x01 not json {")
    assert "not valid JSON" in caught.value.reason


def test_decode_refuses_a_tombstone() -> None:
    with pytest.raises(PoisonMessage) as caught:
        decode(Envelope[Sale], None)
    assert "empty" in caught.value.reason


def test_decode_names_the_field_that_breaks_the_contract() -> None:
    broken = envelope_json()
    broken["payload"]["lines"][0]["unit_price"] = 2.55

    with pytest.raises(PoisonMessage) as caught:
        decode(Envelope[Sale], orjson.dumps(broken))
    assert "payload.lines.0.unit_price" in caught.value.reason


def test_decode_names_a_missing_field() -> None:
    broken = envelope_json()
    del broken["payload"]

    with pytest.raises(PoisonMessage) as caught:
        decode(Envelope[Sale], orjson.dumps(broken))
    assert "payload" in caught.value.reason


@pytest.mark.parametrize("raw", [b"[]", b"42", b'"sale"', b"null"])
def test_decode_refuses_json_of_the_wrong_shape(raw: bytes) -> None:
    with pytest.raises(PoisonMessage) as caught:
        decode(Envelope[Sale], raw)
    assert caught.value.reason.startswith("breaks the contract")


def test_decode_refuses_an_envelope_whose_payload_has_an_impossible_year() -> None:
    broken = envelope_json()
    broken["payload"]["occurred_at"] = "9999-12-31T23:59:59-05:00"

    with pytest.raises(PoisonMessage) as caught:
        decode(Envelope[Sale], orjson.dumps(broken))
    assert "payload.occurred_at" in caught.value.reason


# --- topics ------------------------------------------------------------------------------------


def test_the_sales_topic_and_its_dead_letter_twin_are_created() -> None:
    names = all_topic_names()

    assert "pos.sales.v1" in names
    assert "pos.sales.v1.dlq" in names
    assert len(names) == len(set(names))


def test_a_prefix_is_applied_to_topics_and_dead_letter_topics() -> None:
    names = all_topic_names("t42-")

    assert "t42-pos.sales.v1" in names
    assert "t42-pos.sales.v1.dlq" in names
    assert all(name.startswith("t42-") for name in names)
    assert POS_SALES.dlq("t42-") == "t42-pos.sales.v1.dlq"


def test_an_event_time_is_kept_with_its_offset_and_instant() -> None:
    sale = Sale.model_validate(sale_body(occurred_at="2010-12-01T09:26:00+01:00"))
    decoded = decode(Envelope[Sale], encode(sale_recorded(sale, source="pos-gateway")))

    assert decoded.occurred_at == datetime(2010, 12, 1, 8, 26, tzinfo=UTC)
    assert decoded.payload.occurred_at.utcoffset() == timedelta(hours=1)


def test_the_gateways_one_dump_envelope_is_byte_identical_to_the_models() -> None:
    from crm_shared.events import sale_recorded_document
    from crm_shared.serde import encode_document

    for sale in (Sale.model_validate(sale_body()), Sale.model_validate(sale_body(kind="return", member_id=None))):
        payload = sale.model_dump(mode="json")
        assert encode_document(sale_recorded_document(sale, source="pos-gateway", payload=payload)) == \
            encode(sale_recorded(sale, source="pos-gateway"))


def contract_models() -> list[type[Any]]:
    import inspect

    from crm_shared import events, marketing_events, supply_events
    from pydantic import BaseModel

    return [model for module in (events, marketing_events, supply_events)
            for _, model in inspect.getmembers(module, inspect.isclass)
            if issubclass(model, BaseModel) and model.__module__ == module.__name__]


def test_every_contract_refuses_nan_and_infinity() -> None:
    """pydantic's lax floats take the JSON strings "NaN" and "inf"; a consumer that learns or ranks by one
    would carry it for good. Every contract model says no, so a new one cannot forget it."""
    models = contract_models()
    assert len(models) >= 20
    assert [m.__name__ for m in models if m.model_config.get("allow_inf_nan", True)] == []


FLOAT_CASES = {
    "LowStock": ({"store_id": "s1", "sku": "A", "on_hand": 2, "on_order": 0, "forecast_daily": 1.5,
                  "days_of_cover": 1.3, "as_of": "2011-06-01T12:00:00+00:00"}, ["forecast_daily", "days_of_cover"]),
    "OrderLine": ({"sku": "A", "quantity": 12, "pack_size": 6, "need_id": str(uuid.UUID(int=1)), "reorder_point": 4,
                   "order_up_to": 20, "on_hand": 2, "on_order": 0, "forecast_daily": 1.5}, ["forecast_daily"]),
    "OfferReason": ({"trigger": "cross_sell", "detail": "A -> B", "source_event_id": str(uuid.UUID(int=2)),
                     "rule_confidence": 0.6, "rule_lift": 3.2}, ["rule_confidence", "rule_lift"]),
    "VisitRhythm": ({"intervals": 3, "mean_days": 7.0, "spread_days": 1.0, "days_overdue": None},
                    ["mean_days", "spread_days", "days_overdue"]),
}


@pytest.mark.parametrize("name", sorted(FLOAT_CASES))
@pytest.mark.parametrize("value", ["NaN", "inf", "-inf", "Infinity"])
def test_a_nan_or_infinite_number_is_refused_naming_the_field(name: str, value: str) -> None:
    model = next(m for m in contract_models() if m.__name__ == name)
    payload, fields = FLOAT_CASES[name]
    model.model_validate(payload)  # the case itself is valid
    for field in fields:
        with pytest.raises(ValidationError) as refused:
            model.model_validate({**payload, field: value})
        assert [(e["loc"], e["msg"]) for e in refused.value.errors()] == [((field,), "Input should be a finite number")]


def test_a_profile_with_nan_in_a_share_is_dead_letter_material_naming_the_field() -> None:
    from crm_shared.events import MemberProfileUpdated, member_event

    profile = MemberProfileUpdated.model_validate({
        "member_id": "m1", "as_of": "2011-06-01T12:00:00+00:00", "first_purchase_at": "2011-01-03T10:00:00+00:00",
        "last_purchase_at": "2011-05-30T10:00:00+00:00", "recency_days": 2.1, "frequency": 5, "returns": 0,
        "monetary": "120.50", "average_basket_value": "24.10", "average_basket_size": 7.5, "returns_rate": 0.0,
        "discount_share": 0.1, "preferred_store": "s1", "hour_of_day": {"10": 5}, "weekday": {"0": 5},
        "visit_rhythm": {"intervals": 4, "mean_days": 36.5, "spread_days": 4.0, "days_overdue": None},
        "tier": "member", "points_balance": 120, "categories": {"home": 0.6}, "brands": {}})
    document = orjson.loads(encode(member_event(profile, event_type="MemberProfileUpdated", member_id="m1",
                                                occurred_at=profile.as_of, source="test", identity="profile/m1/1")))
    document["payload"]["categories"] = {"home": "NaN"}
    with pytest.raises(PoisonMessage) as poison:
        decode(Envelope[MemberProfileUpdated], orjson.dumps(document))
    assert poison.value.reason == "breaks the contract: payload.categories.home: Input should be a finite number"
