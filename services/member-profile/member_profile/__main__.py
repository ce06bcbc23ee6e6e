"""`python -m member_profile [serve|migrate]`."""

from __future__ import annotations

import sys
from typing import Any

from crm_shared import service_main
from crm_shared.logs import configure_logging
from crm_shared.settings import CommonSettings

from member_profile import SERVICE_NAME
from member_profile.settings import MemberProfileSettings


def app_factory() -> Any:
    from member_profile.api import create_app
    from member_profile.bootstrap import build

    common = CommonSettings()
    configure_logging(SERVICE_NAME, common.log_level, common.log_json)
    return create_app(build(common, MemberProfileSettings()))


def main(argv: list[str] | None = None) -> int:
    return service_main.run(argv, service=SERVICE_NAME, description=__doc__, settings_factory=MemberProfileSettings,
                            app_factory="member_profile.__main__:app_factory")


if __name__ == "__main__":
    sys.exit(main())
