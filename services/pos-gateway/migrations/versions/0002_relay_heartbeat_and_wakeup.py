"""Relay heartbeat and outbox wake-up.

The relay may run in its own process (`python -m pos_gateway background`): it records when it last
reached the broker, so the API's readiness can tell, and new outbox rows wake it by NOTIFY instead
of it polling.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "relay_heartbeat",
        sa.Column("relay_id", sa.Text, primary_key=True),
        sa.Column("last_ok", sa.DateTime(timezone=True), nullable=False),
    )
    # One notification per inserting statement (and PostgreSQL folds repeats within a transaction),
    # on a channel named after the schema so gateways sharing a database do not wake each other.
    op.execute("""
        CREATE FUNCTION outbox_wake_relay() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify(TG_TABLE_SCHEMA || '.outbox', '');
            RETURN NULL;
        END
        $$
    """)
    op.execute("CREATE TRIGGER outbox_wake_relay AFTER INSERT ON outbox "
               "FOR EACH STATEMENT EXECUTE FUNCTION outbox_wake_relay()")


def downgrade() -> None:
    op.execute("DROP TRIGGER outbox_wake_relay ON outbox")
    op.execute("DROP FUNCTION outbox_wake_relay()")
    op.drop_table("relay_heartbeat")
