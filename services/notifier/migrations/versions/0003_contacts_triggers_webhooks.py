"""Consent from member.consents.v1, products for new arrivals and after-sale care, scheduled triggers,
event-time stamps per member fact, low stock held until a receipt clears it, redemption by code and
its reversal on a return, webhook deliveries, the offer chooser's state.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""CREATE TABLE contacts (
        member_id VARCHAR(64) NOT NULL,
        enrolled BOOLEAN NOT NULL,
        consents JSONB NOT NULL,
        home_store VARCHAR(64),
        birthday CHAR(5),
        as_of TIMESTAMP WITH TIME ZONE NOT NULL,
        PRIMARY KEY (member_id)
)""")
    op.execute("CREATE INDEX ix_contacts_birthday ON contacts (birthday) WHERE enrolled")
    op.execute("""CREATE TABLE products (
        sku VARCHAR(64) NOT NULL,
        category TEXT,
        brand TEXT,
        launched_at TIMESTAMP WITH TIME ZONE,
        PRIMARY KEY (sku)
)""")
    op.execute("""CREATE TABLE scheduled (
        source_id VARCHAR(200) NOT NULL,
        trigger VARCHAR(32) NOT NULL,
        campaign_id VARCHAR(64),
        member_id VARCHAR(64),
        sku VARCHAR(64),
        store_id VARCHAR(64),
        due_at TIMESTAMP WITH TIME ZONE NOT NULL,
        detail TEXT NOT NULL,
        fired_at TIMESTAMP WITH TIME ZONE,
        PRIMARY KEY (source_id)
)""")
    op.execute("CREATE INDEX ix_scheduled_due ON scheduled (due_at) WHERE fired_at IS NULL")
    op.execute("""CREATE TABLE clocks (
        name VARCHAR(32) NOT NULL,
        at TIMESTAMP WITH TIME ZONE NOT NULL,
        PRIMARY KEY (name)
)""")
    op.execute("ALTER TABLE members ADD COLUMN profile_seen BOOLEAN NOT NULL DEFAULT false")
    op.execute("ALTER TABLE members ADD COLUMN profile_as_of TIMESTAMP WITH TIME ZONE")
    op.execute("ALTER TABLE members ADD COLUMN tier_as_of TIMESTAMP WITH TIME ZONE")
    op.execute("ALTER TABLE members ADD COLUMN segments_as_of TIMESTAMP WITH TIME ZONE")
    op.execute("ALTER TABLE members ADD COLUMN categories TEXT[] NOT NULL DEFAULT '{}'")
    op.execute("ALTER TABLE members ADD COLUMN brands TEXT[] NOT NULL DEFAULT '{}'")
    op.execute("CREATE INDEX ix_members_categories ON members USING gin (categories)")
    op.execute("CREATE INDEX ix_members_brands ON members USING gin (brands)")
    op.execute("ALTER TABLE low_stock ADD COLUMN cleared_at TIMESTAMP WITH TIME ZONE")
    op.execute("ALTER TABLE offers ADD COLUMN redeemed_by VARCHAR(64)")
    op.execute("ALTER TABLE offers ADD COLUMN redeemed_by_code BOOLEAN NOT NULL DEFAULT false")
    op.execute("CREATE INDEX ix_offers_redeemed_by ON offers (redeemed_by) WHERE redeemed_by IS NOT NULL")
    op.execute("ALTER TABLE offers ADD COLUMN features JSONB")
    op.execute("ALTER TABLE offers ADD COLUMN learned BOOLEAN NOT NULL DEFAULT false")
    op.execute("CREATE INDEX ix_offers_to_learn ON offers (valid_to) WHERE features IS NOT NULL AND NOT learned")
    op.execute("""CREATE TABLE webhook_deliveries (
        offer_id VARCHAR(64) NOT NULL,
        body TEXT NOT NULL,
        status VARCHAR(16) NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
        last_error TEXT,
        delivered_at TIMESTAMP WITH TIME ZONE,
        created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
        PRIMARY KEY (offer_id)
)""")
    op.execute("CREATE INDEX ix_webhook_pending ON webhook_deliveries (next_attempt_at) WHERE status = 'pending'")
    op.execute("""CREATE TABLE model_state (
        name VARCHAR(64) NOT NULL,
        state BYTEA NOT NULL,
        updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
        PRIMARY KEY (name)
)""")


def downgrade() -> None:
    for table in ("model_state", "webhook_deliveries", "clocks", "scheduled", "products", "contacts"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
    op.execute("DROP INDEX IF EXISTS ix_offers_redeemed_by")
    op.execute("DROP INDEX IF EXISTS ix_offers_to_learn")
    op.execute("ALTER TABLE offers DROP COLUMN IF EXISTS learned")
    op.execute("ALTER TABLE offers DROP COLUMN IF EXISTS features")
    op.execute("ALTER TABLE offers DROP COLUMN IF EXISTS redeemed_by_code")
    op.execute("ALTER TABLE offers DROP COLUMN IF EXISTS redeemed_by")
    op.execute("ALTER TABLE low_stock DROP COLUMN IF EXISTS cleared_at")
    for column in ("brands", "categories", "segments_as_of", "tier_as_of", "profile_as_of", "profile_seen"):
        op.execute(f"ALTER TABLE members DROP COLUMN IF EXISTS {column}")
