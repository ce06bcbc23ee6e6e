"""Sales that scan an offer code are kept for late offers too, whoever bought (a forwarded code at an
anonymous till or by another member): an offer decided after such a sale was applied (a tier thanks
read late) is redeemed by it, as if the offer had been there first. `member_id` may now be empty, and
`codes` holds the codes a sale scanned.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE member_purchases ALTER COLUMN member_id DROP NOT NULL")
    op.execute("ALTER TABLE member_purchases ADD COLUMN codes TEXT[] NOT NULL DEFAULT '{}'")
    op.execute("CREATE INDEX ix_member_purchases_codes ON member_purchases USING gin (codes) WHERE codes <> '{}'")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_member_purchases_codes")
    op.execute("DELETE FROM member_purchases WHERE member_id IS NULL")
    op.execute("ALTER TABLE member_purchases DROP COLUMN codes")
    op.execute("ALTER TABLE member_purchases ALTER COLUMN member_id SET NOT NULL")
