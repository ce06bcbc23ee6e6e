from __future__ import annotations

from typing import Literal

from crm_shared.service_main import migrations_dir_beside
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    """pos-gateway's own settings (env prefix `POS_GATEWAY_`); endpoints come from `CommonSettings`."""

    model_config = SettingsConfigDict(env_prefix="POS_GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8001
    # HTTP worker processes; each has its own group-commit writer. The background work runs once per
    # `serve` (or once per worker when inline: relays take turns by advisory lock and live-stats
    # consumers share the partitions), so any number is safe.
    workers: int = Field(default=1, ge=1, le=32)
    schema_name: str = "pos_gateway"
    max_body_bytes: int = 1_048_576
    max_batch_sales: int = Field(default=500, ge=1)
    max_future_hours: float = 24.0
    # Group commit: concurrent requests share one PostgreSQL transaction (each still waits for it).
    writer_max_batch: int = Field(default=256, ge=1)
    # Group-commit transactions in flight at once, each on its own connection: the next batch is sent
    # while the previous one waits for its commit (PostgreSQL flushes their WAL together).
    writer_concurrency: int = Field(default=2, ge=1, le=8)
    # Where the outbox relay and the live-stats consumer run: "process" = `python -m pos_gateway
    # background`, a child of `serve`, so they do not take CPU from the HTTP API's event loop;
    # "inline" = in the API process's event loop (one process, but fewer sales/s).
    background: Literal["inline", "process"] = "process"
    relay_enabled: bool = True
    relay_batch_size: int = Field(default=1000, ge=1)
    # New outbox rows wake the relay at once (PostgreSQL NOTIFY); this poll is the safety net. It
    # must stay well under the 5 s after which readiness calls a silent relay down.
    relay_idle_poll_seconds: float = Field(default=1.0, gt=0, le=2.0)
    outbox_retention_hours: float = 24.0
    live_stats_enabled: bool = True
    live_stats_window_hours: int = 24
    db_pool_size: int = 10
    # Requests per API key and gateway process (token bucket; 0 = off). A batch is one request.
    # Health, readiness and metrics are never limited.
    rate_limit_per_second: float = Field(default=500.0, ge=0)
    rate_limit_burst: int = Field(default=1000, ge=1)
    migrations_dir: str = Field(default_factory=lambda: migrations_dir_beside(__file__))

