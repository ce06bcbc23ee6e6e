"""Which of the notifier's consumer groups screen what they read before applying it."""

from __future__ import annotations

from unittest.mock import MagicMock

from crm_shared.consumer import sale_from_the_future
from crm_shared.settings import CommonSettings
from notifier.stream import consumers


def test_sales_are_screened_and_the_other_groups_are_not() -> None:
    """Profiles need no screen: the contract refuses NaN and infinite numbers (`test_contract.py`)."""
    built = {c.name.rsplit(".", 1)[-1]: c for c in consumers(CommonSettings(), MagicMock(), MagicMock(), batch=100)}
    assert built["sales"].screen is sale_from_the_future
    assert "profiles" in built and len(built) > 2
    assert all(c.screen is None for part, c in built.items() if part != "sales"), built
