"""Wires the console's clients and handlers. Nothing connects at import time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crm_shared.auth import DEV_KEY_PREFIX, ApiKeyError, KeyRing
from crm_shared.kafka import wait_for_broker
from crm_shared.settings import CommonSettings

from ops_console.handlers import ConsoleHandlers
from ops_console.settings import OpsConsoleSettings
from ops_console.upstream import LagMonitor, ServiceApis, consumer_groups


@dataclass
class OpsConsoleService:
    common: CommonSettings
    settings: OpsConsoleSettings
    keyring: KeyRing
    apis: ServiceApis
    lag: LagMonitor
    handlers: ConsoleHandlers

    async def start(self) -> None:
        self.lag.start()

    async def stop(self) -> None:
        await self.lag.stop()
        await self.apis.close()

    def readiness_checks(self) -> dict[str, Any]:
        async def broker() -> None:  # the lag panel needs it; the other panels need only the services
            await wait_for_broker(self.common.kafka_bootstrap, timeout=2)

        return {"broker": broker}


def build(common: CommonSettings | None = None, settings: OpsConsoleSettings | None = None) -> OpsConsoleService:
    common = common or CommonSettings()
    settings = settings or OpsConsoleSettings()
    if common.env == "production" and settings.upstream_api_key.get_secret_value().startswith(DEV_KEY_PREFIX):
        raise ApiKeyError("CRM_ENV=production: set OPS_CONSOLE_UPSTREAM_API_KEY to a real ops key (dev keys are refused)")
    apis = ServiceApis(settings)
    lag = LagMonitor(common.kafka_bootstrap, common.topic_prefix, consumer_groups(), settings.lag_refresh_seconds)
    return OpsConsoleService(common, settings, KeyRing.from_settings(common.api_keys, common.env), apis, lag,
                             ConsoleHandlers(apis, lag, settings))
