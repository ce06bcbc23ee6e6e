"""Offers deferred out of quiet hours are held until their `valid_from` (wall clock) before they reach
the outbox, so a tool reading `marketing.offers.v1` never gets a 23:00 push before 08:00.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE deferred_offers (
            offer_id VARCHAR(64) PRIMARY KEY,
            member_id VARCHAR(64) NOT NULL,
            not_before TIMESTAMP WITH TIME ZONE NOT NULL,
            event_id UUID NOT NULL,
            key BYTEA NOT NULL,
            value BYTEA NOT NULL
        )""")
    op.execute("CREATE INDEX ix_deferred_offers_due ON deferred_offers (not_before)")


def downgrade() -> None:
    # What is still held goes out now rather than never: to the outbox, for this deployment's topic.
    from crm_shared.settings import CommonSettings
    from crm_shared.topics import MARKETING_OFFERS

    topic = MARKETING_OFFERS.qualified(CommonSettings().topic_prefix).replace("'", "''")
    op.execute(f"INSERT INTO outbox (event_id, topic, key, value) SELECT event_id, '{topic}', key, value "
               "FROM deferred_offers ORDER BY not_before, offer_id")
    op.execute("DROP TABLE deferred_offers")
