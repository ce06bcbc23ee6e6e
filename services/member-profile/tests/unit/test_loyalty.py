"""Points and tiers (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from crm_shared.events import Sale
from member_profile.loyalty import Lot, LoyaltyRules, NotEnoughPoints, balance, expired, points_for, spend, take_back, tier_for

T0 = datetime(2011, 3, 1, 12, tzinfo=UTC)
RULES = LoyaltyRules()


def sale(*lines: tuple[str, int, str, str]) -> Sale:
    return Sale.model_validate({"sale_id": "1", "store_id": "s1", "terminal_id": "t", "member_id": "m",
                                "occurred_at": T0.isoformat(), "currency": "GBP",
                                "lines": [{"sku": s, "quantity": q, "unit_price": p, "discount": d} for s, q, p, d in lines]})


def test_points_are_net_spend_times_rate_floored_with_category_multipliers() -> None:
    basket = sale(("A", 3, "2.55", "0"), ("B", 1, "10.00", "1.50"))  # 7.65 + 8.50 = 16.15
    assert points_for(basket, RULES) == 16
    assert points_for(basket, LoyaltyRules(points_per_unit=Decimal("2"))) == 32
    doubled = LoyaltyRules(category_multipliers={"baby": Decimal("2")})
    assert points_for(basket, doubled, category_of=lambda sku: "baby" if sku == "B" else None) == 24  # 7.65 + 17.00
    assert points_for(sale(("Z", 1, "0.99", "0")), RULES) == 0


def lots() -> list[Lot]:
    return [Lot(1, 100, T0 + timedelta(days=30)), Lot(2, 50, T0 + timedelta(days=10)), Lot(3, 20, T0 - timedelta(days=1))]


def test_spending_takes_the_soonest_to_expire_first_and_never_goes_negative() -> None:
    assert balance(lots(), T0) == 150  # lot 3 has lapsed
    assert spend(lots(), 70, T0) == [(2, 50), (1, 20)]
    with pytest.raises(NotEnoughPoints) as short:
        spend(lots(), 151, T0)
    assert short.value.balance == 150
    assert take_back(lots(), 500, T0) == [(2, 50), (1, 100)]  # a return takes back what is left, no more


def test_a_return_takes_back_only_points_held_at_its_own_time() -> None:
    """Found by the whole-system kill drill: a return applied in one batch with the member's later sale
    took points from that later sale's lot; applied in a batch of its own, it took none."""
    held = Lot(1, 10, T0 + timedelta(days=300), earned_at=T0 - timedelta(days=5))
    later = Lot(2, 200, T0 + timedelta(days=370), earned_at=T0 + timedelta(days=3))
    assert take_back([held, later], 150, T0) == [(1, 10)]
    assert take_back([held, later], 150, T0 + timedelta(days=3)) == [(1, 10), (2, 140)]


def test_expiry_is_decided_in_event_time() -> None:
    assert expired(lots(), T0) == [(3, 20)]
    assert expired(lots(), T0 + timedelta(days=10)) == [(2, 50), (3, 20)]


@pytest.mark.parametrize(("spend_12m", "tier"), [("0", "member"), ("499.99", "member"), ("500", "silver"),
                                                 ("1999.99", "silver"), ("2000", "gold"), ("10000", "vip")])
def test_tiers_by_rolling_spend(spend_12m: str, tier: str) -> None:
    assert tier_for(Decimal(spend_12m), RULES) == tier
