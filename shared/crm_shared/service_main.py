"""What every service's `__main__` shares: `serve` (migrate, then uvicorn) and `migrate`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crm_shared.logs import configure_logging
from crm_shared.settings import CommonSettings

Command = Callable[[argparse.Namespace, CommonSettings, Any], int | None]


def migrations_dir_beside(package_file: str) -> str:
    """`services/<name>/migrations` in a source checkout; `/app/migrations` in a container image."""
    beside = Path(package_file).resolve().parents[1] / "migrations"
    return str(beside if beside.is_dir() else Path("/app/migrations"))


def migrate(common: CommonSettings, settings: Any) -> None:
    from crm_shared.migrations import upgrade

    upgrade(Path(settings.migrations_dir), database_url=common.database_url, schema=settings.schema_name)


def serve(app_factory: str, settings: Any, *, http: Any = "httptools") -> None:
    """`http`: uvicorn's HTTP protocol, by name or class (a service may bring its own tuned one)."""
    import uvicorn

    uvicorn.run(app_factory, factory=True, workers=settings.workers, host=settings.host, port=settings.port,
                log_config=None, access_log=False, loop="uvloop", http=http, timeout_graceful_shutdown=10)


def run(argv: list[str] | None, *, service: str, description: str | None, settings_factory: Callable[[], Any],
        app_factory: str, extra: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Command]] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {app_factory.split('.')[0]}", description=description)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run migrations, then the HTTP API and the stream processors (default)")
    sub.add_parser("migrate", help="bring the database schema up to date")
    for name, (help_text, configure, _) in (extra or {}).items():
        configure(sub.add_parser(name, help=help_text))
    args = parser.parse_args(argv)
    common, settings = CommonSettings(), settings_factory()
    configure_logging(service, common.log_level, common.log_json)
    if args.command == "migrate":
        migrate(common, settings)
        return 0
    if args.command in (extra or {}):
        return (extra or {})[args.command][2](args, common, settings) or 0
    migrate(common, settings)
    serve(app_factory, settings)
    return 0
