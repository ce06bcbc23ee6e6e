"""Low-stock holds by event time: every low-stock report and goods receipt per store and SKU, so that
an offer made at time t is held back only if the SKU was low at t (not because of a report, read
early, from after t), and a receipt read late still ends the hold at its own time.

Replaces `low_stock` (one row per store and SKU, held "now"); its rows carry over as signals.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""CREATE TABLE stock_signals (
        store_id VARCHAR(64) NOT NULL,
        sku VARCHAR(64) NOT NULL,
        at TIMESTAMP WITH TIME ZONE NOT NULL,
        kind VARCHAR(8) NOT NULL,
        days_of_cover NUMERIC,
        recorded_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
        PRIMARY KEY (store_id, sku, at, kind)
)""")
    op.execute("""INSERT INTO stock_signals (store_id, sku, at, kind, days_of_cover)
        SELECT store_id, sku, as_of, 'low', days_of_cover FROM low_stock""")
    op.execute("""INSERT INTO stock_signals (store_id, sku, at, kind)
        SELECT store_id, sku, cleared_at, 'received' FROM low_stock WHERE cleared_at IS NOT NULL""")
    op.execute("DROP TABLE low_stock")


def downgrade() -> None:
    op.execute("""CREATE TABLE low_stock (
        store_id VARCHAR(64) NOT NULL,
        sku VARCHAR(64) NOT NULL,
        as_of TIMESTAMP WITH TIME ZONE NOT NULL,
        days_of_cover NUMERIC NOT NULL,
        cleared_at TIMESTAMP WITH TIME ZONE,
        PRIMARY KEY (store_id, sku)
)""")
    op.execute("""INSERT INTO low_stock (store_id, sku, as_of, days_of_cover, cleared_at)
        SELECT DISTINCT ON (low.store_id, low.sku) low.store_id, low.sku, low.at, low.days_of_cover,
               (SELECT min(r.at) FROM stock_signals r WHERE r.store_id = low.store_id AND r.sku = low.sku
                 AND r.kind = 'received' AND r.at >= low.at)
        FROM stock_signals low WHERE low.kind = 'low' ORDER BY low.store_id, low.sku, low.at DESC""")
    op.execute("DROP TABLE stock_signals")
