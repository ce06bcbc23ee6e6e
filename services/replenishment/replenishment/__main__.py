"""`python -m replenishment [serve|migrate]`."""

from __future__ import annotations

import sys
from typing import Any

from crm_shared import service_main
from crm_shared.logs import configure_logging
from crm_shared.settings import CommonSettings

from replenishment import SERVICE_NAME
from replenishment.settings import ReplenishmentSettings


def app_factory() -> Any:
    from replenishment.api import create_app
    from replenishment.bootstrap import build

    common = CommonSettings()
    configure_logging(SERVICE_NAME, common.log_level, common.log_json)
    return create_app(build(common, ReplenishmentSettings()))


def main(argv: list[str] | None = None) -> int:
    return service_main.run(argv, service=SERVICE_NAME, description=__doc__, settings_factory=ReplenishmentSettings,
                            app_factory="replenishment.__main__:app_factory")


if __name__ == "__main__":
    sys.exit(main())
