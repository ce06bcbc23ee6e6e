"""Product catalog (from catalog.products.v1) and category/brand habits on profiles.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "products",
        sa.Column("sku", sa.String(64), primary_key=True),
        sa.Column("category", sa.String(200)),
        sa.Column("brand", sa.String(100)),
        sa.Column("department", sa.String(100)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    for column in ("category_items", "brand_items"):
        op.add_column("profiles", sa.Column(column, postgresql.JSONB, nullable=False,
                                            server_default=sa.text("'{}'::jsonb")))


def downgrade() -> None:
    op.drop_column("profiles", "brand_items")
    op.drop_column("profiles", "category_items")
    op.drop_table("products")
