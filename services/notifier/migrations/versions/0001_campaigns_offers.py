"""Campaigns, offers (sent and withheld), suppression counts, members seen, erasures, basket rules, low stock, outbox.

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
    op.execute("""CREATE TABLE basket_rules (
        scope VARCHAR(64) NOT NULL,
        window_end TIMESTAMP WITH TIME ZONE NOT NULL,
        rules JSONB NOT NULL,
        PRIMARY KEY (scope)
)""")
    op.execute("""CREATE TABLE campaigns (
        campaign_id VARCHAR(64) NOT NULL,
        definition JSONB NOT NULL,
        status VARCHAR(16) NOT NULL,
        sent BIGINT DEFAULT '0' NOT NULL,
        created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
        updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
        PRIMARY KEY (campaign_id)
)""")
    op.execute("""CREATE TABLE erased_members (
        member_id VARCHAR(64) NOT NULL,
        erased_at TIMESTAMP WITH TIME ZONE NOT NULL,
        PRIMARY KEY (member_id)
)""")
    op.execute("""CREATE TABLE low_stock (
        store_id VARCHAR(64) NOT NULL,
        sku VARCHAR(64) NOT NULL,
        as_of TIMESTAMP WITH TIME ZONE NOT NULL,
        days_of_cover NUMERIC NOT NULL,
        PRIMARY KEY (store_id, sku)
)""")
    op.execute("""CREATE TABLE members (
        member_id VARCHAR(64) NOT NULL,
        tier VARCHAR(16),
        preferred_store VARCHAR(64),
        segments TEXT[] DEFAULT '{}' NOT NULL,
        first_seen_at TIMESTAMP WITH TIME ZONE NOT NULL,
        PRIMARY KEY (member_id)
)""")
    op.execute("""CREATE TABLE offers (
        offer_id VARCHAR(64) NOT NULL,
        campaign_id VARCHAR(64) NOT NULL,
        member_id VARCHAR(64) NOT NULL,
        trigger VARCHAR(32) NOT NULL,
        channel VARCHAR(16) NOT NULL,
        products TEXT[] NOT NULL,
        store_id VARCHAR(64),
        text TEXT NOT NULL,
        issued_at TIMESTAMP WITH TIME ZONE NOT NULL,
        valid_to TIMESTAMP WITH TIME ZONE NOT NULL,
        withheld BOOLEAN NOT NULL,
        redeemed_at TIMESTAMP WITH TIME ZONE,
        redeemed_revenue NUMERIC,
        PRIMARY KEY (offer_id)
)""")
    op.execute("""CREATE INDEX ix_offers_campaign ON offers (campaign_id)""")
    op.execute("""CREATE INDEX ix_offers_member_valid ON offers (member_id, valid_to)""")
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
    op.execute("""CREATE TABLE suppressions (
        campaign_id VARCHAR(64) NOT NULL,
        reason VARCHAR(32) NOT NULL,
        count BIGINT NOT NULL,
        PRIMARY KEY (campaign_id, reason)
)""")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS suppressions")
    op.execute("DROP TABLE IF EXISTS outbox")
    op.execute("DROP TABLE IF EXISTS offers")
    op.execute("DROP TABLE IF EXISTS members")
    op.execute("DROP TABLE IF EXISTS low_stock")
    op.execute("DROP TABLE IF EXISTS erased_members")
    op.execute("DROP TABLE IF EXISTS campaigns")
    op.execute("DROP TABLE IF EXISTS basket_rules")
    op.execute("DROP TABLE IF EXISTS applied_events")
