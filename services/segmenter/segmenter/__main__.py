"""`python -m segmenter [serve|migrate]`."""

from __future__ import annotations

import sys
from typing import Any

from crm_shared import service_main
from crm_shared.logs import configure_logging
from crm_shared.settings import CommonSettings

from segmenter import SERVICE_NAME
from segmenter.settings import SegmenterSettings


def app_factory() -> Any:
    from segmenter.api import create_app
    from segmenter.bootstrap import build

    common = CommonSettings()
    configure_logging(SERVICE_NAME, common.log_level, common.log_json)
    return create_app(build(common, SegmenterSettings()))


def main(argv: list[str] | None = None) -> int:
    return service_main.run(argv, service=SERVICE_NAME, description=__doc__, settings_factory=SegmenterSettings,
                            app_factory="segmenter.__main__:app_factory")


if __name__ == "__main__":
    sys.exit(main())
