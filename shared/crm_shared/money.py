"""Money is `Decimal` end to end and travels as a decimal string, never as a float."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

MAX_MONEY_DECIMALS = 4
_DECIMAL_STRING = re.compile(r"^-?\d{1,12}(\.\d+)?$")
# Prices repeat: a sale's lines are decoded by every consuming service, and one shop's price list is
# short. A string already accepted maps to its (immutable) Decimal; this made decoding a 22-line sale
# about twice as fast. Bounded: cleared when full.
_ACCEPTED: dict[str, Decimal] = {}
_ACCEPTED_MAX = 50_000


def parse_money(value: Any) -> Decimal:
    """Accept a decimal string (or a Decimal from our own code); refuse floats and ints from the wire."""
    if type(value) is str:
        accepted = _ACCEPTED.get(value)
        if accepted is not None:
            return accepted
    if isinstance(value, Decimal):
        candidate = value
    elif isinstance(value, str):
        if not _DECIMAL_STRING.match(value.strip()):
            raise ValueError("must be a decimal string such as \"2.55\"")
        try:
            candidate = Decimal(value.strip())
        except InvalidOperation as exc:  # pragma: no cover - the regex already guards this
            raise ValueError("must be a decimal string such as \"2.55\"") from exc
    elif isinstance(value, bool):
        raise ValueError("must be a decimal string such as \"2.55\", not a boolean")
    elif isinstance(value, float):
        raise ValueError("must be a decimal string such as \"2.55\", not a JSON float (floats lose pennies)")
    elif isinstance(value, int):
        raise ValueError("must be a decimal string such as \"2.55\", not a JSON number")
    else:
        raise ValueError("must be a decimal string such as \"2.55\"")
    if not candidate.is_finite():  # a Decimal from our own code: NaN or Infinity is no amount of money
        raise ValueError("must be a finite amount")
    exponent = candidate.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > MAX_MONEY_DECIMALS:
        raise ValueError(f"has more than {MAX_MONEY_DECIMALS} decimal places")
    if type(value) is str:
        if len(_ACCEPTED) >= _ACCEPTED_MAX:
            _ACCEPTED.clear()
        _ACCEPTED[value] = candidate
    return candidate


def parse_non_negative_money(value: Any) -> Decimal:
    """`parse_money` (and its cache), refusing an amount below zero (a price): one call per field rather
    than a parse and a separate field validator (sale lines are decoded by every consuming service)."""
    candidate = parse_money(value)
    if candidate < 0:
        raise ValueError("must not be negative")
    return candidate


def format_money(value: Decimal) -> str:
    return format(value, "f")


MONEY_SERIALIZER = PlainSerializer(format_money, return_type=str, when_used="always")
Money = Annotated[
    Decimal,
    BeforeValidator(parse_money),
    MONEY_SERIALIZER,
    WithJsonSchema({"type": "string", "pattern": r"^-?\d{1,12}(\.\d{1,4})?$", "examples": ["2.55"]}),
]
NON_NEGATIVE_MONEY_SCHEMA = WithJsonSchema({"type": "string", "pattern": r"^\d{1,12}(\.\d{1,4})?$", "examples": ["2.55"]})
NonNegativeMoney = Annotated[Decimal, BeforeValidator(parse_non_negative_money), MONEY_SERIALIZER,
                             NON_NEGATIVE_MONEY_SCHEMA]
