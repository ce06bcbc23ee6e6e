"""`python -m notifier [serve|migrate]`."""

from __future__ import annotations

import sys
from typing import Any

from crm_shared import service_main
from crm_shared.logs import configure_logging
from crm_shared.settings import CommonSettings

from notifier import SERVICE_NAME
from notifier.settings import NotifierSettings


def app_factory() -> Any:
    from notifier.api import create_app
    from notifier.bootstrap import build

    common = CommonSettings()
    configure_logging(SERVICE_NAME, common.log_level, common.log_json)
    return create_app(build(common, NotifierSettings()))


def main(argv: list[str] | None = None) -> int:
    return service_main.run(argv, service=SERVICE_NAME, description=__doc__, settings_factory=NotifierSettings,
                            app_factory="notifier.__main__:app_factory")


if __name__ == "__main__":
    sys.exit(main())
