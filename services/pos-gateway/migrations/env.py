from alembic import context
from crm_shared.migrations import run_env
from pos_gateway.store import metadata

run_env(context, metadata, default_schema="pos_gateway")
