from __future__ import annotations

import json

from crm_shared.service_main import migrations_dir_beside
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from notifier.domain import DEFAULT_TRIGGERS, TRIGGERS, Policy


class NotifierSettings(BaseSettings):
    """notifier's own settings (env prefix `NOTIFIER_`); endpoints come from `CommonSettings`."""

    model_config = SettingsConfigDict(env_prefix="NOTIFIER_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8005
    workers: int = Field(default=1, ge=1, le=8)
    schema_name: str = "notifier"
    consumer_enabled: bool = True
    consumer_batch: int = Field(default=2000, ge=1)
    db_pool_size: int = 10
    relay_idle_poll_seconds: float = 0.05
    # Triggers: a comma-separated subset of cross_sell, dormant_wakeup, tier_upgrade, welcome, run_out ("" = none).
    # run_out is opt-in: it keeps a purchase rhythm per member x product, a write per sale line.
    triggers: str = ",".join(DEFAULT_TRIGGERS)
    seed_campaigns: bool = Field(default=True, description="Create a running default campaign per enabled trigger")
    # Guards
    daily_cap: int = Field(default=2, ge=0)
    weekly_cap: int = Field(default=5, ge=0)
    quiet_start_hour: int = Field(default=21, ge=0, le=23)
    quiet_end_hour: int = Field(default=8, ge=0, le=23)
    default_time_zone: str = "UTC"
    store_time_zones: str = Field(default="{}", description='JSON {"store id": "Europe/London", ...}')
    run_out_lead_days: float = Field(default=2.0, ge=0, description="Remind this long before the predicted re-purchase")
    run_out_min_purchases: int = Field(default=3, ge=2, description="Purchase occasions before a product counts as regular")
    low_stock_hold_hours: float = Field(default=72.0, gt=0, description="A low-stock report holds this long in event time")
    # Consent lives in member-profile; the notifier asks it (and remembers the answer a short while).
    member_profile_url: str = "http://127.0.0.1:8002"
    member_profile_key: str = "dev-marketing"
    consent_cache_seconds: float = Field(default=60.0, ge=0)
    consent_timeout_seconds: float = Field(default=2.0, gt=0)
    migrations_dir: str = Field(default_factory=lambda: migrations_dir_beside(__file__))

    @field_validator("triggers")
    @classmethod
    def _known_triggers(cls, value: str) -> str:
        unknown = [t for t in (p.strip() for p in value.split(",")) if t and t not in TRIGGERS]
        if unknown:
            raise ValueError(f"unknown trigger {unknown[0]!r}; choose from {TRIGGERS}")
        return value

    @field_validator("store_time_zones")
    @classmethod
    def _zones(cls, value: str) -> str:
        from zoneinfo import ZoneInfo

        zones = json.loads(value)
        if not isinstance(zones, dict):
            raise ValueError("must be a JSON object of store id -> IANA time zone")
        for zone in zones.values():
            ZoneInfo(zone)
        return value

    @property
    def enabled_triggers(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.triggers.split(",") if t.strip())

    def policy(self) -> Policy:
        return Policy(daily_cap=self.daily_cap, weekly_cap=self.weekly_cap, quiet_start_hour=self.quiet_start_hour,
                      quiet_end_hour=self.quiet_end_hour, default_time_zone=self.default_time_zone,
                      store_time_zones=json.loads(self.store_time_zones))
