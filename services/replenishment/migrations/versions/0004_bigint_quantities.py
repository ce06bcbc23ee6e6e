"""64-bit unit counts: reorder levels, need and order-line quantities and received totals were int32, so a
second receipt of 2,000 × 1,000,000 units overflowed ("out of int32 range") and gave a 500.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COLUMNS = {
    "stock": ("reorder_point", "order_up_to"),
    "needs": ("quantity", "reorder_point", "order_up_to"),
    "po_lines": ("quantity", "received"),
}


def upgrade() -> None:
    for table, columns in COLUMNS.items():
        for column in columns:
            op.alter_column(table, column, type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=False)


def downgrade() -> None:
    for table, columns in COLUMNS.items():
        for column in columns:
            op.alter_column(table, column, type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=False)
