from __future__ import annotations

from crm_shared.service_main import migrations_dir_beside
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    """pos-gateway's own settings (env prefix `POS_GATEWAY_`); endpoints come from `CommonSettings`."""

    model_config = SettingsConfigDict(env_prefix="POS_GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8001
    # HTTP worker processes; each has its own group-commit writer. Relays take turns (advisory
    # lock) and live-stats consumers share the partitions, so any number is safe.
    workers: int = Field(default=1, ge=1, le=32)
    schema_name: str = "pos_gateway"
    max_body_bytes: int = 1_048_576
    max_batch_sales: int = Field(default=500, ge=1)
    max_future_hours: float = 24.0
    # Group commit: concurrent requests share one PostgreSQL transaction (each still waits for it).
    writer_max_batch: int = Field(default=256, ge=1)
    relay_enabled: bool = True
    relay_batch_size: int = Field(default=1000, ge=1)
    relay_idle_poll_seconds: float = 0.2
    outbox_retention_hours: float = 24.0
    live_stats_enabled: bool = True
    live_stats_window_hours: int = 24
    db_pool_size: int = 10
    migrations_dir: str = Field(default_factory=lambda: migrations_dir_beside(__file__))

