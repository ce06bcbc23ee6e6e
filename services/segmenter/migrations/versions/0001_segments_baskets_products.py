"""Members' segments and their history, segment sizes, model snapshots, baskets, product sales, outbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""CREATE TABLE applied_events (
        event_id UUID NOT NULL,
        topic VARCHAR(200) NOT NULL,
        applied_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
        PRIMARY KEY (event_id)
)""")
    op.execute("""CREATE TABLE baskets (
        basket_id VARCHAR(100) NOT NULL,
        store_id VARCHAR(64) NOT NULL,
        at TIMESTAMP WITH TIME ZONE NOT NULL,
        items TEXT[] NOT NULL,
        PRIMARY KEY (basket_id)
)""")
    op.execute("""CREATE INDEX ix_baskets_at ON baskets (at)""")
    op.execute("""CREATE TABLE erased_members (
        member_id VARCHAR(64) NOT NULL,
        erased_at TIMESTAMP WITH TIME ZONE NOT NULL,
        PRIMARY KEY (member_id)
)""")
    op.execute("""CREATE TABLE members (
        member_id VARCHAR(64) NOT NULL,
        as_of TIMESTAMP WITH TIME ZONE NOT NULL,
        first_purchase_at TIMESTAMP WITH TIME ZONE,
        last_purchase_at TIMESTAMP WITH TIME ZONE,
        visits INTEGER NOT NULL,
        monetary FLOAT NOT NULL,
        basket_value FLOAT NOT NULL,
        basket_size FLOAT NOT NULL,
        interval_mean FLOAT,
        interval_spread FLOAT,
        features JSONB NOT NULL,
        facts JSONB NOT NULL,
        value_tier VARCHAR(40),
        persona VARCHAR(40),
        cluster VARCHAR(40),
        scores JSONB,
        p_active FLOAT,
        expected_next_visit_at TIMESTAMP WITH TIME ZONE,
        profile_event_id UUID NOT NULL,
        PRIMARY KEY (member_id)
)""")
    op.execute("""CREATE INDEX ix_members_cluster ON members (cluster)""")
    op.execute("""CREATE INDEX ix_members_persona ON members (persona)""")
    op.execute("""CREATE INDEX ix_members_value_tier ON members (value_tier)""")
    op.execute("""CREATE TABLE model_state (
        name VARCHAR(64) NOT NULL,
        state BYTEA NOT NULL,
        updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
        PRIMARY KEY (name)
)""")
    op.execute("""CREATE TABLE outbox (
        id BIGSERIAL NOT NULL,
        event_id UUID NOT NULL,
        topic TEXT NOT NULL,
        key BYTEA NOT NULL,
        value BYTEA NOT NULL,
        created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
        published_at TIMESTAMP WITH TIME ZONE,
        PRIMARY KEY (id)
)""")
    op.execute("""CREATE INDEX ix_outbox_unpublished ON outbox (id) WHERE published_at IS NULL""")
    op.execute("""CREATE TABLE product_daily (
        store_id VARCHAR(64) NOT NULL,
        sku VARCHAR(64) NOT NULL,
        day DATE NOT NULL,
        quantity BIGINT NOT NULL,
        revenue NUMERIC NOT NULL,
        baskets INTEGER NOT NULL,
        PRIMARY KEY (store_id, sku, day)
)""")
    op.execute("""CREATE INDEX ix_product_daily_day ON product_daily (day)""")
    op.execute("""CREATE INDEX ix_product_daily_sku_day ON product_daily (sku, day)""")
    op.execute("""CREATE TABLE products (
        sku VARCHAR(64) NOT NULL,
        description VARCHAR(300) NOT NULL,
        PRIMARY KEY (sku)
)""")
    op.execute("""CREATE TABLE rules_published (
        scope VARCHAR(64) NOT NULL,
        fingerprint VARCHAR(64) NOT NULL,
        published_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
        PRIMARY KEY (scope)
)""")
    op.execute("""CREATE TABLE segment_changes (
        id BIGSERIAL NOT NULL,
        member_id VARCHAR(64) NOT NULL,
        dimension VARCHAR(20) NOT NULL,
        "old" VARCHAR(40),
        "new" VARCHAR(40),
        reason TEXT NOT NULL,
        as_of TIMESTAMP WITH TIME ZONE NOT NULL,
        PRIMARY KEY (id)
)""")
    op.execute("""CREATE INDEX ix_segment_changes_member ON segment_changes (member_id, id)""")
    op.execute("""CREATE TABLE segment_sizes (
        day DATE NOT NULL,
        dimension VARCHAR(20) NOT NULL,
        segment VARCHAR(40) NOT NULL,
        size INTEGER NOT NULL,
        PRIMARY KEY (day, dimension, segment)
)""")


def downgrade() -> None:
    op.drop_table("segment_sizes")
    op.drop_table("segment_changes")
    op.drop_table("rules_published")
    op.drop_table("products")
    op.drop_table("product_daily")
    op.drop_table("outbox")
    op.drop_table("model_state")
    op.drop_table("members")
    op.drop_table("erased_members")
    op.drop_table("baskets")
    op.drop_table("applied_events")
