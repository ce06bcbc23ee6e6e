"""Which of the notifier's consumer groups screen what they read before applying it."""

from __future__ import annotations

from unittest.mock import MagicMock

from crm_shared.consumer import profile_with_non_finite_numbers, sale_from_the_future
from crm_shared.settings import CommonSettings
from notifier.stream import consumers


def test_sales_and_profiles_are_screened_and_the_other_groups_are_not() -> None:
    built = {c.name.rsplit(".", 1)[-1]: c for c in consumers(CommonSettings(), MagicMock(), MagicMock(), batch=100)}
    assert built["sales"].screen is sale_from_the_future
    assert built["profiles"].screen is profile_with_non_finite_numbers
    assert all(c.screen is None for part, c in built.items() if part not in ("sales", "profiles")), built
