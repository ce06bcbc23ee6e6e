from __future__ import annotations

from crm_shared.service_main import migrations_dir_beside
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from replenishment.domain import Policy


class ReplenishmentSettings(BaseSettings):
    """replenishment's own settings (env prefix `REPLENISHMENT_`); endpoints come from `CommonSettings`."""

    model_config = SettingsConfigDict(env_prefix="REPLENISHMENT_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8004
    workers: int = Field(default=1, ge=1, le=32)
    schema_name: str = "replenishment"
    consumer_enabled: bool = True
    consumer_batch: int = Field(default=2000, ge=1)
    db_pool_size: int = 10
    relay_idle_poll_seconds: float = 0.2
    # The policy: service level (z), days of demand on top of the lead time for order-up-to, and
    # the days of cover below which a SKU is published as low stock.
    service_level_z: float = Field(default=Policy.service_level_z, ge=0, le=5)
    review_days: int = Field(default=Policy.review_days, ge=1, le=90)
    low_cover_days: float = Field(default=Policy.low_cover_days, ge=0, le=90)
    units_per_offer: float = Field(default=Policy.units_per_offer, ge=0, le=1000)
    migrations_dir: str = Field(default_factory=lambda: migrations_dir_beside(__file__))

    def policy(self) -> Policy:
        return Policy(service_level_z=self.service_level_z, review_days=self.review_days,
                      low_cover_days=self.low_cover_days, units_per_offer=self.units_per_offer)
