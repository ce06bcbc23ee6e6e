"""Profiles, purchase history, event-time watermark, applied events.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "applied_events",
        sa.Column("event_id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("topic", sa.String(200), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "profiles",
        sa.Column("member_id", sa.String(64), primary_key=True),
        sa.Column("first_purchase_at", sa.DateTime(timezone=True)),
        sa.Column("last_purchase_at", sa.DateTime(timezone=True)),
        sa.Column("frequency", sa.Integer, nullable=False),
        sa.Column("returns", sa.Integer, nullable=False),
        sa.Column("monetary", sa.Numeric, nullable=False),
        sa.Column("gross_sales", sa.Numeric, nullable=False),
        sa.Column("items_bought", sa.BigInteger, nullable=False),
        sa.Column("lines_bought", sa.BigInteger, nullable=False),
        sa.Column("items_returned", sa.BigInteger, nullable=False),
        sa.Column("items_on_discount", sa.BigInteger, nullable=False),
        sa.Column("discount_total", sa.Numeric, nullable=False),
        sa.Column("store_visits", postgresql.JSONB, nullable=False),
        sa.Column("hour_of_day", postgresql.JSONB, nullable=False),
        sa.Column("weekday", postgresql.JSONB, nullable=False),
        sa.Column("rhythm_last_visit_day", sa.Date),
        sa.Column("rhythm_intervals", sa.Integer, nullable=False),
        sa.Column("rhythm_mean_days", sa.Float, nullable=False),
        sa.Column("rhythm_m2", sa.Float, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("ix_profiles_monetary", "profiles", ["monetary"])
    op.create_table(
        "purchases",
        sa.Column("event_id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("member_id", sa.String(64), nullable=False),
        sa.Column("store_id", sa.String(64), nullable=False),
        sa.Column("sale_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("total", sa.Numeric, nullable=False),
        sa.Column("item_count", sa.Integer, nullable=False),
        sa.Column("lines", postgresql.JSONB, nullable=False),
    )
    op.create_index("ix_purchases_member_time", "purchases", ["member_id", "occurred_at"])
    op.create_table(
        "watermark",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("as_of", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    for table in ("watermark", "purchases", "profiles", "applied_events"):
        op.drop_table(table)
