"""Points in 64-bit integers (a mis-keyed price must not overflow them), longer ledger causes,
catalog labels of any length.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table, column in (("points_lots", "points"), ("points_lots", "remaining"), ("points_ledger", "points"),
                          ("redemptions", "points"), ("redemptions", "balance_after")):
        op.alter_column(table, column, type_=sa.BigInteger)
    op.alter_column("points_ledger", "cause", type_=sa.String(200))
    for column in ("category", "brand", "department"):
        op.alter_column("products", column, type_=sa.Text)


def downgrade() -> None:
    for column in ("category", "brand", "department"):
        op.alter_column("products", column, type_=sa.String(200))
    op.alter_column("points_ledger", "cause", type_=sa.String(100))
    for table, column in (("points_lots", "points"), ("points_lots", "remaining"), ("points_ledger", "points"),
                          ("redemptions", "points"), ("redemptions", "balance_after")):
        op.alter_column(table, column, type_=sa.Integer)
