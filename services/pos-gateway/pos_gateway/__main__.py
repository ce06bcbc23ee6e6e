"""`python -m pos_gateway [serve|migrate|republish --since TIME]`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from crm_shared.logs import configure_logging
from crm_shared.settings import CommonSettings

from pos_gateway import SERVICE_NAME
from pos_gateway.settings import GatewaySettings


def migrate(common: CommonSettings, settings: GatewaySettings) -> None:
    from crm_shared.migrations import upgrade

    upgrade(Path(settings.migrations_dir), database_url=common.database_url, schema=settings.schema_name)


def app_factory() -> Any:
    """What each uvicorn worker process builds for itself (no connection is shared across forks)."""
    from pos_gateway.api import create_app
    from pos_gateway.bootstrap import build

    common = CommonSettings()
    configure_logging(SERVICE_NAME, common.log_level, common.log_json)
    return create_app(build(common, GatewaySettings()))


def serve(common: CommonSettings, settings: GatewaySettings) -> None:
    import uvicorn

    uvicorn.run("pos_gateway.__main__:app_factory", factory=True, workers=settings.workers, host=settings.host,
                port=settings.port, log_config=None, access_log=False, loop="uvloop", http="httptools",
                timeout_graceful_shutdown=10)


async def _republish(common: CommonSettings, settings: GatewaySettings, since: datetime, until: datetime | None) -> int:
    from crm_shared.db import make_engine
    from crm_shared.topics import POS_SALES

    from pos_gateway.store import republish

    engine = make_engine(common.database_url, schema=settings.schema_name)
    try:
        return await republish(engine, sales_topic=POS_SALES.qualified(common.topic_prefix), since=since, until=until)
    finally:
        await engine.dispose()


def aware(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a time zone, e.g. 2010-12-01T00:00:00+00:00")
    return moment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pos_gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the HTTP API, the outbox relay and the live-stats consumer (default)")
    sub.add_parser("migrate", help="bring the database schema up to date")
    rep = sub.add_parser("republish", help="queue recorded sales again for pos.sales.v1 (same event ids)")
    rep.add_argument("--since", type=aware, required=True, help="event time, ISO 8601 with zone")
    rep.add_argument("--until", type=aware, default=None)
    args = parser.parse_args(argv)
    common, settings = CommonSettings(), GatewaySettings()
    configure_logging(SERVICE_NAME, common.log_level, common.log_json)
    if args.command == "migrate":
        migrate(common, settings)
    elif args.command == "republish":
        queued = asyncio.run(_republish(common, settings, args.since, args.until))
        print(f"queued {queued} sales for publishing; the running gateway's relay sends them")
    else:
        migrate(common, settings)
        serve(common, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
