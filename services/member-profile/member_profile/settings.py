from __future__ import annotations

from crm_shared.service_main import migrations_dir_beside
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    migrations_dir: str = Field(default_factory=lambda: migrations_dir_beside(__file__))
