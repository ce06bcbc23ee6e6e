"""Sell-through (daily units sold and returned) is kept by a consumer group of its own, which records
what it applied in `applied_sell_through`. The sales applied before this revision are in `daily_sales`
already: their ids are copied, so the new group, starting at the topic's beginning, skips them.

Upgrade with replenishment stopped (`docker compose stop replenishment`, then migrate, then start):
a sale that code from before this revision applies after the copy is counted in `daily_sales` by it
and again by the new group. The new group also dead-letters the retained topic's old poison records
once more (under its own `dlq.consumer`).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "applied_sell_through",
        sa.Column("event_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("topic", sa.String(200), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.execute("INSERT INTO applied_sell_through (event_id, topic, applied_at) "
               "SELECT event_id, topic, applied_at FROM applied_events WHERE topic LIKE '%pos.sales.v1'")


def downgrade() -> None:
    op.drop_table("applied_sell_through")
