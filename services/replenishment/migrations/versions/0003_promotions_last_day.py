"""Index on promotions.last_day: every sales batch first asks whether any campaign is still running.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_promotions_last_day", "promotions", ["last_day"])


def downgrade() -> None:
    op.drop_index("ix_promotions_last_day", "promotions")
