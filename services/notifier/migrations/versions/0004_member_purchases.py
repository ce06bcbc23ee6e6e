"""Members' recent sales and returns in topic order, so that an offer decided after sales of its
window were applied (a tier or segment event read late) is redeemed by the same sale as if it had
been there first.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""CREATE TABLE member_purchases (
        seq BIGSERIAL NOT NULL,
        member_id VARCHAR(64) NOT NULL,
        sale_id VARCHAR(64) NOT NULL,
        at TIMESTAMP WITH TIME ZONE NOT NULL,
        kind VARCHAR(8) NOT NULL,
        original_sale_id VARCHAR(64),
        lines JSONB NOT NULL,
        total NUMERIC NOT NULL,
        recorded_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
        PRIMARY KEY (seq)
)""")
    op.execute("CREATE INDEX ix_member_purchases_member ON member_purchases (member_id, seq)")
    op.execute("CREATE INDEX ix_member_purchases_at ON member_purchases (at)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS member_purchases")
