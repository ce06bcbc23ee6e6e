"""Purchase rhythms per member x product, for run-out reminders.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""CREATE TABLE rhythms (
        member_id VARCHAR(64) NOT NULL,
        sku VARCHAR(64) NOT NULL,
        purchases BIGINT NOT NULL,
        first_at TIMESTAMP WITH TIME ZONE NOT NULL,
        last_at TIMESTAMP WITH TIME ZONE NOT NULL,
        due_at TIMESTAMP WITH TIME ZONE,
        interval_seconds FLOAT,
        reminded_for TIMESTAMP WITH TIME ZONE,
        PRIMARY KEY (member_id, sku)
)""")
    op.execute("""CREATE INDEX ix_rhythms_due_at ON rhythms (due_at)""")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS rhythms")
