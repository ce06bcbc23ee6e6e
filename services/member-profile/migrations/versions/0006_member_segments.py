"""The segmenter's current segments per member, for `GET /v1/members?segment=`.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "member_segments",
        sa.Column("member_id", sa.String(64), primary_key=True),
        sa.Column("value_tier", sa.String(40)),
        sa.Column("persona", sa.String(40)),
        sa.Column("cluster", sa.String(40)),
        sa.Column("as_of", sa.DateTime(timezone=True), nullable=False),
    )
    for column in ("value_tier", "persona", "cluster"):
        op.create_index(f"ix_member_segments_{column}", "member_segments", [column])


def downgrade() -> None:
    op.drop_table("member_segments")
