"""Stock count ids belong to their store: the key is (store_id, count_id), so a count id one store used
does not answer another store's count with the first store's record.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_constraint("stock_counts_pkey", "stock_counts", type_="primary")
    op.create_primary_key("stock_counts_pkey", "stock_counts", ["store_id", "count_id"])


def downgrade() -> None:
    op.drop_constraint("stock_counts_pkey", "stock_counts", type_="primary")
    op.create_primary_key("stock_counts_pkey", "stock_counts", ["count_id"])
