"""Planned campaigns: issued offers per store × sku raise expected demand while they run.

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
    op.create_table(
        "promotions",
        sa.Column("offer_id", sa.String(64), nullable=False),
        sa.Column("sku", sa.String(64), nullable=False),
        sa.Column("store_id", sa.String(64), nullable=False),
        sa.Column("first_day", sa.Date(), nullable=False),
        sa.Column("last_day", sa.Date(), nullable=False),
        sa.PrimaryKeyConstraint("offer_id", "sku"),
    )
    op.create_index("ix_promotions_store_sku", "promotions", ["store_id", "sku", "last_day"])


def downgrade() -> None:
    op.drop_table("promotions")
