from __future__ import annotations

from decimal import Decimal

from crm_shared.service_main import migrations_dir_beside
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from member_profile.loyalty import LoyaltyRules


class MemberProfileSettings(BaseSettings):
    """member-profile's own settings (env prefix `MEMBER_PROFILE_`); endpoints come from `CommonSettings`."""

    model_config = SettingsConfigDict(env_prefix="MEMBER_PROFILE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8002
    workers: int = Field(default=1, ge=1, le=32)
    schema_name: str = "member_profile"
    consumer_enabled: bool = True
    consumer_batch: int = Field(default=2000, ge=1)
    cache_ttl_seconds: int = 7 * 24 * 3600
    db_pool_size: int = 10
    # Loyalty: points per currency unit of net spend (floored), multipliers per product category,
    # event-time days a point lives, tier thresholds on rolling 12-month net spend.
    points_per_unit: Decimal = Decimal("1")
    category_multipliers: dict[str, Decimal] = Field(default_factory=dict)
    points_expiry_days: int = Field(default=365, ge=1)
    tier_silver: Decimal = Decimal("500")
    tier_gold: Decimal = Decimal("2000")
    tier_vip: Decimal = Decimal("10000")
    tier_window_days: int = Field(default=365, ge=1)
    call_list_sigmas: float = 2.0
    relay_idle_poll_seconds: float = 0.2

    def loyalty_rules(self) -> LoyaltyRules:
        return LoyaltyRules(points_per_unit=self.points_per_unit, category_multipliers=self.category_multipliers,
                            expiry_days=self.points_expiry_days, tier_window_days=self.tier_window_days,
                            tier_thresholds={"silver": self.tier_silver, "gold": self.tier_gold, "vip": self.tier_vip})
    migrations_dir: str = Field(default_factory=lambda: migrations_dir_beside(__file__))
