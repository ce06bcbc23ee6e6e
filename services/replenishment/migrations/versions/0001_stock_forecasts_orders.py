"""Stock per store × sku with its demand model, sell-through, needs, purchase orders, counts, receipts.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('applied_events',
    sa.Column('event_id', sa.UUID(), nullable=False),
    sa.Column('topic', sa.String(length=200), nullable=False),
    sa.Column('applied_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('event_id')
    )
    op.create_table('daily_sales',
    sa.Column('store_id', sa.String(length=64), nullable=False),
    sa.Column('sku', sa.String(length=64), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('sold', sa.BigInteger(), nullable=False),
    sa.Column('returned', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('store_id', 'sku', 'day')
    )
    op.create_table('needs',
    sa.Column('need_id', sa.UUID(), nullable=False),
    sa.Column('store_id', sa.String(length=64), nullable=False),
    sa.Column('sku', sa.String(length=64), nullable=False),
    sa.Column('cycle', sa.Date(), nullable=False),
    sa.Column('supplier_id', sa.String(length=64), nullable=False),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('pack_size', sa.Integer(), nullable=False),
    sa.Column('unit_cost', sa.Numeric(), nullable=True),
    sa.Column('lead_time_days', sa.Integer(), nullable=False),
    sa.Column('reorder_point', sa.Integer(), nullable=False),
    sa.Column('order_up_to', sa.Integer(), nullable=False),
    sa.Column('on_hand', sa.BigInteger(), nullable=False),
    sa.Column('on_order', sa.BigInteger(), nullable=False),
    sa.Column('forecast_daily', sa.Float(), nullable=False),
    sa.Column('detected_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('po_id', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('need_id'),
    sa.UniqueConstraint('store_id', 'sku', 'cycle', name='ux_needs_store_sku_cycle')
    )
    op.create_table('outbox',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('event_id', sa.UUID(), nullable=False),
    sa.Column('topic', sa.Text(), nullable=False),
    sa.Column('key', sa.LargeBinary(), nullable=False),
    sa.Column('value', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('published_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('products',
    sa.Column('sku', sa.String(length=64), nullable=False),
    sa.Column('description', sa.Text(), server_default='', nullable=False),
    sa.Column('supplier_id', sa.String(length=64), nullable=True),
    sa.Column('unit_cost', sa.Numeric(), nullable=True),
    sa.Column('pack_size', sa.Integer(), nullable=True),
    sa.Column('min_order_quantity', sa.Integer(), nullable=True),
    sa.Column('lead_time_days', sa.Integer(), nullable=True),
    sa.Column('shelf_capacity', sa.Integer(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('sku')
    )
    op.create_table('purchase_orders',
    sa.Column('po_id', sa.String(length=64), nullable=False),
    sa.Column('supplier_id', sa.String(length=64), nullable=False),
    sa.Column('store_id', sa.String(length=64), nullable=False),
    sa.Column('cycle', sa.Date(), nullable=False),
    sa.Column('status', sa.String(length=24), nullable=False),
    sa.Column('raised_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expected_by', sa.DateTime(timezone=True), nullable=False),
    sa.Column('acked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('shipped_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('reason', sa.Text(), server_default='', nullable=False),
    sa.Column('over_delivered', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.PrimaryKeyConstraint('po_id'),
    sa.UniqueConstraint('supplier_id', 'store_id', 'cycle', name='ux_po_supplier_store_cycle')
    )
    op.create_table('receipts',
    sa.Column('store_id', sa.String(length=64), nullable=False),
    sa.Column('receipt_id', sa.String(length=64), nullable=False),
    sa.Column('po_id', sa.String(length=64), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('lines', sa.ARRAY(sa.Text()), nullable=False),
    sa.Column('over_delivered', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('store_id', 'receipt_id')
    )
    op.create_table('stock',
    sa.Column('store_id', sa.String(length=64), nullable=False),
    sa.Column('sku', sa.String(length=64), nullable=False),
    sa.Column('on_hand', sa.BigInteger(), nullable=False),
    sa.Column('on_order', sa.BigInteger(), nullable=False),
    sa.Column('sold', sa.BigInteger(), nullable=False),
    sa.Column('returned', sa.BigInteger(), nullable=False),
    sa.Column('received', sa.BigInteger(), nullable=False),
    sa.Column('shrinkage', sa.BigInteger(), nullable=False),
    sa.Column('negative_since', sa.DateTime(timezone=True), nullable=True),
    sa.Column('low_since', sa.Date(), nullable=True),
    sa.Column('last_event_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('late_lines', sa.BigInteger(), nullable=False),
    sa.Column('level', sa.Float(), nullable=False),
    sa.Column('season', sa.ARRAY(sa.Float()), nullable=False),
    sa.Column('days_learned', sa.Integer(), nullable=False),
    sa.Column('error_square', sa.Float(), nullable=False),
    sa.Column('error_abs', sa.Float(), nullable=False),
    sa.Column('actual_abs', sa.Float(), nullable=False),
    sa.Column('open_day', sa.Date(), nullable=True),
    sa.Column('open_quantity', sa.Float(), nullable=False),
    sa.Column('forecast_daily', sa.Float(), nullable=False),
    sa.Column('sigma_daily', sa.Float(), nullable=False),
    sa.Column('reorder_point', sa.Integer(), nullable=False),
    sa.Column('order_up_to', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('store_id', 'sku')
    )
    op.create_table('stock_counts',
    sa.Column('count_id', sa.String(length=64), nullable=False),
    sa.Column('store_id', sa.String(length=64), nullable=False),
    sa.Column('sku', sa.String(length=64), nullable=False),
    sa.Column('expected', sa.BigInteger(), nullable=False),
    sa.Column('counted', sa.BigInteger(), nullable=False),
    sa.Column('shrinkage', sa.BigInteger(), nullable=False),
    sa.Column('counted_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('count_id')
    )
    op.create_table('stores',
    sa.Column('store_id', sa.String(length=64), nullable=False),
    sa.Column('as_of', sa.DateTime(timezone=True), nullable=False),
    sa.Column('current_day', sa.Date(), nullable=False),
    sa.PrimaryKeyConstraint('store_id')
    )
    op.create_table('po_lines',
    sa.Column('po_id', sa.String(length=64), nullable=False),
    sa.Column('sku', sa.String(length=64), nullable=False),
    sa.Column('need_id', sa.UUID(), nullable=False),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('received', sa.Integer(), server_default='0', nullable=False),
    sa.Column('unit_cost', sa.Numeric(), nullable=True),
    sa.ForeignKeyConstraint(['po_id'], ['purchase_orders.po_id'], ),
    sa.PrimaryKeyConstraint('po_id', 'sku'),
    sa.UniqueConstraint('need_id')
    )
    op.create_index('ix_needs_unordered', 'needs', ['store_id'], unique=False, postgresql_where=sa.text('po_id IS NULL'))
    op.create_index('ix_outbox_unpublished', 'outbox', ['id'], unique=False, postgresql_where=sa.text('published_at IS NULL'))
    op.create_index('ix_products_supplier', 'products', ['supplier_id'], unique=False)
    op.create_index('ix_po_supplier_status', 'purchase_orders', ['supplier_id', 'status'], unique=False)


def downgrade() -> None:
    for table in ('po_lines', 'stores', 'stock_counts', 'stock', 'receipts', 'purchase_orders', 'products', 'outbox',
                  'needs', 'daily_sales', 'applied_events'):
        op.drop_table(table)
