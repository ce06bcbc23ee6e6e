from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class OpsConsoleSettings(BaseSettings):
    """ops-console's own settings (env prefix `OPS_CONSOLE_`); the broker comes from `CommonSettings`."""

    model_config = SettingsConfigDict(env_prefix="OPS_CONSOLE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8006
    workers: int = Field(default=1, ge=1, le=1, description="One process: it keeps the latest lag measurement")
    # Where the five services answer (the embedded ports by default; compose sets the service names).
    pos_gateway_url: str = "http://127.0.0.1:8001"
    member_profile_url: str = "http://127.0.0.1:8002"
    segmenter_url: str = "http://127.0.0.1:8003"
    replenishment_url: str = "http://127.0.0.1:8004"
    notifier_url: str = "http://127.0.0.1:8005"
    # An ops key the console presents to the services (a dev key outside production only).
    upstream_api_key: SecretStr = SecretStr("dev-ops")
    upstream_timeout_seconds: float = Field(default=5.0, gt=0)
    sales_window_hours: int = Field(default=24, ge=1, le=168, description="Hours of event time in the sales panel")
    segment_days: int = Field(default=90, ge=1, le=3660, description="Event days of segment sizes in the trend")
    rules_min_support: float = Field(default=0.02, gt=0, le=1)
    rules_min_confidence: float = Field(default=0.5, ge=0, le=1)
    rules_top: int = Field(default=10, ge=1, le=100)
    orders_shown: int = Field(default=50, ge=1, le=1000)
    stock_items_shown: int = Field(default=50, ge=1, le=1000)
    snapshot_seconds: float = Field(default=2.0, ge=0, description="Browsers polling within this share one answer")
    poll_seconds: float = Field(default=5.0, gt=0, description="How often the page asks for fresh figures")
    lag_refresh_seconds: float = Field(default=10.0, gt=0, description="How often consumer lag is measured")
    cookie_name: str = "crm_console_key"
    cookie_max_age_seconds: int = Field(default=8 * 3600, ge=60)
    cookie_secure: bool = Field(default=False, description="Set behind TLS: the cookie then only travels over https")
