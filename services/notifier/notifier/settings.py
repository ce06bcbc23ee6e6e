from __future__ import annotations

import json
from typing import Literal

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
    # How often offers deferred out of quiet hours are checked for their time (valid_from, wall clock).
    deferred_poll_seconds: float = Field(default=5.0, gt=0)
    # Triggers: a comma-separated subset of cross_sell, dormant_wakeup, tier_upgrade, welcome, birthday,
    # new_arrival, run_out, after_sale ("" = none). run_out is opt-in: it keeps a purchase rhythm per
    # member x product, a write per sale line; after_sale is opt-in: a campaign names its categories.
    triggers: str = ",".join(DEFAULT_TRIGGERS)
    seed_campaigns: bool = Field(default=True, description="Create a running default campaign per enabled trigger")
    # Guards
    daily_cap: int = Field(default=2, ge=0)
    weekly_cap: int = Field(default=5, ge=0)
    quiet_start_hour: int = Field(default=21, ge=0, le=23)
    quiet_end_hour: int = Field(default=8, ge=0, le=23)
    # An offer triggered in quiet hours: "defer" = out when they end, dated then; "suppress" = dropped.
    quiet_hours: Literal["defer", "suppress"] = "defer"
    default_time_zone: str = "UTC"
    store_time_zones: str = Field(default="{}", description='JSON {"store id": "Europe/London", ...}')
    run_out_lead_days: float = Field(default=2.0, ge=0, description="Remind this long before the predicted re-purchase")
    run_out_min_purchases: int = Field(default=3, ge=2, description="Purchase occasions before a product counts as regular")
    late_offer_memory_days: int = Field(
        default=31, ge=1, le=366,
        description="Members' sales kept (event time) for offers decided after them: an offer read this much "
                    "later than sales of its window (a tier or segment event that arrives late) is still redeemed "
                    "by the right sale")
    late_offer_grace_seconds: float = Field(
        default=3600.0, ge=0,
        description="...and for at least this long in wall-clock time: a replay runs months of event time in "
                    "minutes, and a topic a few seconds behind the sales is then weeks behind in event time")
    new_arrival_max_members: int = Field(default=5000, ge=1, description="Most members offered one new arrival")
    birthday_max_members: int = Field(default=50_000, ge=1, description="Most birthdays handled per calendar day")
    chooser_epsilon: float = Field(default=0.05, ge=0, le=1, description="Learned chooser: share of random picks")
    chooser_learning_rate: float = Field(default=0.05, gt=0, le=1)
    campaign_cache_seconds: float = Field(default=1.0, ge=0, description="How long a replica holds campaign definitions")
    pseudonym_key: str = Field(default="dev-pseudonym-key", min_length=8,
                               description="HMAC key for the pseudonyms of erased members' offers (set in production)")
    # Webhook delivery of sent offers to a marketing tool (off when no URL).
    webhook_url: str | None = None
    webhook_secret: str = Field(default="dev-webhook-secret", min_length=8, description="HMAC-SHA256 signing key")
    webhook_max_attempts: int = Field(default=8, ge=1, le=100)
    webhook_retry_base_seconds: float = Field(default=1.0, gt=0)
    webhook_retry_cap_seconds: float = Field(default=300.0, gt=0)
    webhook_timeout_seconds: float = Field(default=5.0, gt=0)
    webhook_batch: int = Field(default=50, ge=1, le=1000)
    webhook_idle_poll_seconds: float = Field(default=0.5, gt=0)
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
        try:
            zones = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"is not JSON: {exc}") from exc
        if not isinstance(zones, dict):
            raise ValueError("must be a JSON object of store id -> IANA time zone")
        for store, zone in zones.items():
            _check_zone(zone, f"store {store!r}: ")
        return value

    @field_validator("default_time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        _check_zone(value, "")
        return value

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value or None

    @property
    def enabled_triggers(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.triggers.split(",") if t.strip())

    def policy(self) -> Policy:
        return Policy(daily_cap=self.daily_cap, weekly_cap=self.weekly_cap, quiet_start_hour=self.quiet_start_hour,
                      quiet_end_hour=self.quiet_end_hour, quiet_hours=self.quiet_hours,
                      default_time_zone=self.default_time_zone,
                      store_time_zones=json.loads(self.store_time_zones))


def _check_zone(zone: object, where: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if not isinstance(zone, str) or not zone:
        raise ValueError(f"{where}{zone!r} is not an IANA time zone name such as 'Europe/London'")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"{where}{zone!r} is not a known IANA time zone (e.g. 'Europe/London')") from exc
