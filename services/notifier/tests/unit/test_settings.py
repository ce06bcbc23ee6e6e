"""Settings that would fail later fail at start, naming what is wrong."""

from __future__ import annotations

import pytest
from notifier.settings import NotifierSettings
from pydantic import ValidationError


def test_an_unknown_time_zone_is_refused_at_start_with_the_store_and_zone_named() -> None:
    with pytest.raises(ValidationError) as caught:
        NotifierSettings(store_time_zones='{"s7": "Mars/Olympus"}')
    assert "store 's7': 'Mars/Olympus' is not a known IANA time zone" in str(caught.value)
    with pytest.raises(ValidationError) as caught:
        NotifierSettings(default_time_zone="Europe/Atlantis")
    assert "'Europe/Atlantis' is not a known IANA time zone" in str(caught.value)
    with pytest.raises(ValidationError, match="is not JSON"):
        NotifierSettings(store_time_zones="{s7: UTC}")
    assert NotifierSettings(store_time_zones='{"tokyo-1": "Asia/Tokyo"}').policy().store_time_zones == {
        "tokyo-1": "Asia/Tokyo"}


def test_triggers_and_webhook_url_are_checked() -> None:
    with pytest.raises(ValidationError, match="unknown trigger 'anniversary'"):
        NotifierSettings(triggers="cross_sell,anniversary")
    with pytest.raises(ValidationError, match="http"):
        NotifierSettings(webhook_url="ftp://tool.example/offers")
    assert NotifierSettings(triggers="birthday,after_sale").enabled_triggers == {"birthday", "after_sale"}


def test_production_refuses_the_dev_secrets() -> None:
    from crm_shared.settings import CommonSettings
    from notifier.bootstrap import build

    common = CommonSettings(env="production", api_keys="a-real-key-of-enough-length:ops")
    with pytest.raises(ValueError, match="NOTIFIER_PSEUDONYM_KEY"):
        build(common, NotifierSettings())
