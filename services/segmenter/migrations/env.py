from alembic import context
from crm_shared.migrations import run_env
from segmenter.store import metadata

run_env(context, metadata, default_schema="segmenter")
