"""Keep each purchase's local calendar day, so a rhythm rebuilt from history counts the same days.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("purchases", sa.Column("visit_day", sa.Date))
    # Rows from before this revision lost their offset; UTC is the best day they can get.
    op.execute("UPDATE purchases SET visit_day = (occurred_at AT TIME ZONE 'UTC')::date WHERE visit_day IS NULL")


def downgrade() -> None:
    op.drop_column("purchases", "visit_day")
