from __future__ import annotations

from crm_shared.service_main import migrations_dir_beside
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SegmenterSettings(BaseSettings):
    """segmenter's own settings (env prefix `SEGMENTER_`); endpoints come from `CommonSettings`."""

    model_config = SettingsConfigDict(env_prefix="SEGMENTER_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8003
    workers: int = Field(default=1, ge=1, le=1, description="One process: the learned model lives in it")
    schema_name: str = "segmenter"
    consumer_enabled: bool = True
    consumer_batch: int = Field(default=2000, ge=1)
    db_pool_size: int = 10
    relay_idle_poll_seconds: float = 0.2
    # Segments
    n_clusters: int = Field(default=6, ge=2, le=50)
    cluster_algorithm: str = Field(default="sequential", pattern="^(sequential|river-kmeans)$")
    cluster_margin: float = Field(default=0.15, ge=0, le=2, description="How much nearer another cluster must be")
    score_band: float = Field(default=0.05, ge=0, le=0.5, description="Dead band around RFM cut points")
    active_days: int = Field(default=365, ge=1, description="Members seen within this many event days count for RFM")
    review_every_days: int = Field(default=7, ge=1, le=28, description=(
        "Review every member (recency drift: dormancy, value tiers) at the midnights of event time that are this "
        "many days apart, counted from Monday 3 January 2000: 7 = every Monday 00:00 UTC, 1 = every midnight. A "
        "member who buys is reclassified at once, whatever this is."))
    churn_refit_days: int = Field(default=7, ge=1, description="Refit the churn model every this many event days")
    churn_horizon_days: float = Field(default=30.0, gt=0)
    # Baskets
    basket_window_days: int = Field(default=90, ge=1)
    rules_min_support: float = Field(default=0.01, gt=0, le=1)
    rules_min_confidence: float = Field(default=0.3, ge=0, le=1)
    rules_min_scope_baskets: int = Field(default=200, ge=1, description="Baskets a store needs before its rules are published")
    rules_publish_max_items: int = Field(default=3, ge=2, le=10, description="Items per published rule (3: A and B -> C)")
    rules_top: int = Field(default=20, ge=1, le=1000)
    rules_publish_seconds: float = Field(default=10.0, gt=0)
    rules_mining_process: bool = Field(default=True, description="Mine rules in a worker process (segmenter.mining)")
    migrations_dir: str = Field(default_factory=lambda: migrations_dir_beside(__file__))
