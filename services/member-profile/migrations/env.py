from alembic import context
from crm_shared.migrations import run_env
from member_profile.store import metadata

run_env(context, metadata, default_schema="member_profile")
