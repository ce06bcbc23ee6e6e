"""Members and consent, loyalty lots and ledger, redemptions, tiers, and the outbox.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "members",
        sa.Column("member_id", sa.String(64), primary_key=True),
        sa.Column("given_name", sa.String(100)),
        sa.Column("family_name", sa.String(100)),
        sa.Column("email", sa.String(254)),
        sa.Column("phone", sa.String(16)),
        sa.Column("card_number", sa.String(19)),
        sa.Column("birth_date", sa.Date),
        sa.Column("home_store", sa.String(64)),
        sa.Column("enrolled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    for column in ("phone", "email"):
        op.create_index(f"ux_members_{column}", "members", [column], unique=True,
                        postgresql_where=sa.text(f"{column} IS NOT NULL"))
    op.create_index("ux_members_card", "members", ["card_number"], unique=True,
                    postgresql_where=sa.text("card_number IS NOT NULL"))
    op.create_table(
        "consents",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("member_id", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(8), nullable=False),
        sa.Column("granted", sa.Boolean, nullable=False),
        sa.Column("given_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("ix_consents_member_channel", "consents", ["member_id", "channel", "id"])
    op.create_table(
        "points_lots",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("member_id", sa.String(64), nullable=False),
        sa.Column("points", sa.Integer, nullable=False),
        sa.Column("remaining", sa.Integer, nullable=False),
        sa.Column("earned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cause", sa.String(100), nullable=False),
        sa.CheckConstraint("remaining >= 0 AND remaining <= points", name="ck_points_lots_remaining"),
    )
    op.create_index("ux_points_lots_cause", "points_lots", ["member_id", "cause"], unique=True)
    op.create_index("ix_points_lots_live", "points_lots", ["member_id", "expires_at"],
                    postgresql_where=sa.text("remaining > 0"))
    op.create_table(
        "points_ledger",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("member_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("points", sa.Integer, nullable=False),
        sa.Column("cause", sa.String(100), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("ux_points_ledger_cause", "points_ledger", ["member_id", "kind", "cause"], unique=True)
    op.create_table(
        "redemptions",
        sa.Column("member_id", sa.String(64), primary_key=True),
        sa.Column("idempotency_key", sa.String(100), primary_key=True),
        sa.Column("points", sa.Integer, nullable=False),
        sa.Column("balance_after", sa.Integer, nullable=False),
        sa.Column("redeemed_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "tiers",
        sa.Column("member_id", sa.String(64), primary_key=True),
        sa.Column("tier", sa.String(8), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rolling_spend", sa.Numeric, nullable=False),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("event_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("key", sa.LargeBinary, nullable=False),
        sa.Column("value", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("published_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_outbox_unpublished", "outbox", ["id"], postgresql_where=sa.text("published_at IS NULL"))


def downgrade() -> None:
    for table in ("outbox", "tiers", "redemptions", "points_ledger", "points_lots", "consents", "members"):
        op.drop_table(table)
