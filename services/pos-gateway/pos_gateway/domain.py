"""pos-gateway's decisions, with no I/O and no clock: the caller passes `now`."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import orjson
from crm_shared.events import Sale


@dataclass(frozen=True)
class Refusal:
    """Why a sale is not accepted: the HTTP status, an error code, the field and a reason."""

    status: int
    error: str
    field: str
    reason: str
    more: tuple[tuple[str, str], ...] = ()  # further (field, reason) pairs when several fields are wrong

    def details(self) -> list[dict[str, str]]:
        return [{"field": self.field, "reason": self.reason}] + [{"field": f, "reason": r} for f, r in self.more]


def fingerprint(sale: Sale, body: Mapping[str, Any] | None = None) -> str:
    """A digest of the sale's meaning; "1.50" and "1.5" are the same price. `body` is the sale's
    JSON dump when the caller has it already."""
    canonical = dict(body if body is not None else sale.model_dump(mode="json"))
    canonical["lines"] = [{**{k: v for k, v in line.items() if k != "offer_code" or v is not None},
                           "unit_price": _normal_decimal(line["unit_price"]),
                           "discount": _normal_decimal(line["discount"])} for line in canonical["lines"]]
    canonical["occurred_at"] = sale.occurred_at.timestamp()
    return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()


# How a Decimal prints with format(value, "f"), which is how sales are dumped: trailing zeros after
# the point can be cut as text, with the same result as Decimal.normalize() and much cheaper.
_PLAIN_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?")


def _normal_decimal(text: str) -> str:
    if _PLAIN_DECIMAL.fullmatch(text):
        return text.rstrip("0").rstrip(".") if "." in text else text
    return format(Decimal(text).normalize(), "f")


def check_timing(sale: Sale, *, now: datetime, max_future: timedelta) -> Refusal | None:
    """A terminal clock may drift, but a sale more than `max_future` ahead of us did not happen yet."""
    if sale.occurred_at > now + max_future:
        hours = max_future.total_seconds() / 3600
        return Refusal(422, "validation_failed", "occurred_at", f"is more than {hours:g} h in the future")
    return None


def check_scope(sale: Sale, store_scope: str | None) -> Refusal | None:
    """A terminal's key belongs to one store; it cannot ring up another store's sales."""
    if store_scope is not None and sale.store_id != store_scope:
        return Refusal(403, "forbidden", "store_id", f"this key is for store {store_scope!r}, not {sale.store_id!r}")
    return None


def check_return(ret: Sale, original: Sale | None, earlier_returns: Sequence[Sale]) -> Refusal | None:
    """A return cannot give back more of a SKU than the original sale sold, counting earlier returns."""
    if ret.kind != "return" or ret.original_sale_id is None:
        return None
    if original is None:
        return None  # the original was rung up elsewhere or before this system: nothing to check against
    if original.kind != "sale":
        return Refusal(422, "validation_failed", "original_sale_id", f"{ret.original_sale_id!r} is itself a return")
    sold = _quantities(original.lines)
    already = _quantities(line for earlier in earlier_returns for line in earlier.lines)
    asked: Counter[str] = Counter()
    for index, line in enumerate(ret.lines):
        asked[line.sku] += line.quantity
        if line.sku not in sold:
            return Refusal(422, "validation_failed", f"lines.{index}.sku",
                           f"{line.sku!r} was not sold in sale {ret.original_sale_id!r}")
        available = sold[line.sku] - already[line.sku]
        if asked[line.sku] > available:
            return Refusal(422, "validation_failed", f"lines.{index}.quantity",
                           f"returns {asked[line.sku]} of {line.sku!r} but only {available} of the "
                           f"{sold[line.sku]} sold in sale {ret.original_sale_id!r} remain returnable")
    return None


def _quantities(lines: Iterable[Any]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in lines:
        counts[line.sku] += line.quantity
    return counts


Resubmission = Literal["replay", "conflict"]


@dataclass(frozen=True)
class ResubmissionDecision:
    outcome: Resubmission
    refusal: Refusal | None = None


def decide_resubmission(*, stored_terminal: str, stored_fingerprint: str, stored_body: Mapping[str, Any],
                        sale: Sale, sale_fingerprint: str) -> ResubmissionDecision:
    """The same sale id posted again: the same sale is a harmless replay, anything else a conflict."""
    if stored_terminal != sale.terminal_id:
        return ResubmissionDecision("conflict", Refusal(
            409, "conflict", "sale_id",
            f"sale {sale.sale_id!r} of store {sale.store_id!r} was already recorded by terminal {stored_terminal!r}"))
    if stored_fingerprint == sale_fingerprint:
        return ResubmissionDecision("replay")
    where = first_difference(stored_body, sale.model_dump(mode="json")) or "body"
    return ResubmissionDecision("conflict", Refusal(
        409, "conflict", where,
        f"sale {sale.sale_id!r} of store {sale.store_id!r} was already recorded with a different {where}"))


def first_difference(before: Any, after: Any, path: str = "") -> str | None:
    """The first field path where two JSON documents differ (e.g. `lines.0.quantity`)."""
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(set(before) | set(after)):
            found = first_difference(before.get(key), after.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    if isinstance(before, list) and isinstance(after, list):
        if len(before) != len(after):
            return path or "body"
        for index, (left, right) in enumerate(zip(before, after, strict=True)):
            found = first_difference(left, right, f"{path}.{index}")
            if found:
                return found
        return None
    if before == after or (path.rsplit(".", 1)[-1] in MONEY_FIELDS and _same_amount(before, after)):
        return None
    return path or "body"


MONEY_FIELDS = {"unit_price", "discount"}


def _same_amount(before: Any, after: Any) -> bool:
    """ "1.50" and "1.5" are the same price; only money fields compare as numbers."""
    try:
        return Decimal(str(before)) == Decimal(str(after))
    except ArithmeticError:
        return False


# Live sales figures are kept in hourly event-time buckets.
def hour_bucket(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d%H")


def window_buckets(latest: datetime, hours: int) -> list[str]:
    """The hourly buckets of the `hours` hours of event time ending at `latest`."""
    top = latest.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return [(top - timedelta(hours=offset)).strftime("%Y%m%d%H") for offset in range(hours)]


MONEY_SCALE = 10_000  # live stats keep money in 1/10000 units so Redis integer sums stay exact


def money_units(amount: Decimal) -> int:
    return int((amount * MONEY_SCALE).to_integral_value())


def units_to_money(units: int) -> Decimal:
    return (Decimal(units) / MONEY_SCALE).quantize(Decimal("0.0001"))

