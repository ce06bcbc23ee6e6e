"""`python -m ops_console [serve]`: the console has no database, so nothing to migrate."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from crm_shared import service_main
from crm_shared.logs import configure_logging
from crm_shared.settings import CommonSettings

from ops_console import SERVICE_NAME
from ops_console.settings import OpsConsoleSettings


def app_factory() -> Any:
    from ops_console.api import create_app
    from ops_console.bootstrap import build

    common = CommonSettings()
    configure_logging(SERVICE_NAME, common.log_level, common.log_json)
    return create_app(build(common, OpsConsoleSettings()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops_console", description=__doc__)
    parser.add_subparsers(dest="command").add_parser("serve", help="serve the console (default)")
    parser.parse_args(argv)
    common, settings = CommonSettings(), OpsConsoleSettings()
    configure_logging(SERVICE_NAME, common.log_level, common.log_json)
    service_main.serve("ops_console.__main__:app_factory", settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
