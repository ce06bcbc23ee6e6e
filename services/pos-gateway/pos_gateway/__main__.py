"""`python -m pos_gateway [serve|migrate|republish --since TIME]`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime
from typing import Any

from crm_shared import service_main
from crm_shared.logs import configure_logging
from crm_shared.settings import CommonSettings

from pos_gateway import SERVICE_NAME
from pos_gateway.settings import GatewaySettings


def app_factory() -> Any:
    """What each uvicorn worker process builds for itself (no connection is shared across forks)."""
    from pos_gateway.api import create_app
    from pos_gateway.bootstrap import build

    common = CommonSettings()
    configure_logging(SERVICE_NAME, common.log_level, common.log_json)
    return create_app(build(common, GatewaySettings()))


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


def _republish_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", type=aware, required=True, help="event time, ISO 8601 with zone")
    parser.add_argument("--until", type=aware, default=None)


def _republish_command(args: argparse.Namespace, common: CommonSettings, settings: GatewaySettings) -> int:
    queued = asyncio.run(_republish(common, settings, args.since, args.until))
    print(f"queued {queued} sales for publishing; the running gateway's relay sends them")
    return 0


def main(argv: list[str] | None = None) -> int:
    return service_main.run(
        argv, service=SERVICE_NAME, description=__doc__, settings_factory=GatewaySettings,
        app_factory="pos_gateway.__main__:app_factory",
        extra={"republish": ("queue recorded sales again for pos.sales.v1 (same event ids)",
                             _republish_arguments, _republish_command)})


if __name__ == "__main__":
    sys.exit(main())
