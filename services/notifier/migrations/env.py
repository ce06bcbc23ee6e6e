from alembic import context
from crm_shared.migrations import run_env
from notifier.store import metadata

run_env(context, metadata, default_schema="notifier")
