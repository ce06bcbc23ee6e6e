"""Settings every service shares: where the broker, the database and the cache are.

Each endpoint comes from the environment (`CRM_KAFKA_BOOTSTRAP`, `CRM_DATABASE_URL`,
`CRM_REDIS_URL`); `crm up` fills them with the embedded stack when they are unset, so the
same code runs against Apache Kafka, PostgreSQL and Redis with no change.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CRM_", extra="ignore")

    env: Literal["development", "test", "production"] = "development"
    kafka_bootstrap: str = "127.0.0.1:9092"
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/crm"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Prefix on every topic name, so test runs (or two demos) can share one broker.
    topic_prefix: str = ""
    topic_partitions: int = Field(default=6, ge=1)
    topic_replication: int = Field(default=1, ge=1)
    # Comma-separated `key:role[:scope]` entries, e.g. `k1:pos:store-7,k2:ops`.
    api_keys: str = ""
    log_level: str = "INFO"
    log_json: bool = True
