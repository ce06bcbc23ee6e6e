"""The console's edges to the rest of the system: the five services' HTTP APIs and the broker's lag."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
from crm_shared.kafka import consumer_lag
from crm_shared.services import SERVICES

from ops_console.domain import Answer, ConsumerGroup, Unavailable
from ops_console.settings import OpsConsoleSettings

log = logging.getLogger(__name__)


def consumer_groups() -> list[ConsumerGroup]:
    """Every consumer group of every service the system runs (whether or not installed beside the console)."""
    return [ConsumerGroup(spec.name, group, topics) for spec in SERVICES for group, topics in spec.consumer_groups]


class ServiceApis:
    """GETs against the services with the console's ops key; a failure becomes `Unavailable` with the reason."""

    def __init__(self, settings: OpsConsoleSettings) -> None:
        self.settings = settings
        self.urls = {"pos-gateway": settings.pos_gateway_url, "member-profile": settings.member_profile_url,
                     "segmenter": settings.segmenter_url, "replenishment": settings.replenishment_url,
                     "notifier": settings.notifier_url}
        self.client = httpx.AsyncClient(timeout=settings.upstream_timeout_seconds,
                                        headers={"x-api-key": settings.upstream_api_key.get_secret_value()})

    async def get(self, service: str, path: str, params: Mapping[str, Any] | None = None) -> Answer:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = await self.client.get(self.urls[service].rstrip("/") + path, params=query)
        except httpx.HTTPError as exc:
            return Unavailable(service, f"{service} did not answer ({type(exc).__name__})")
        if response.status_code != 200:
            return Unavailable(service, f"{service} answered {response.status_code}: {_reason(response)}")
        try:
            body = response.json()
        except ValueError:
            return Unavailable(service, f"{service} answered something that is not JSON")
        return body if isinstance(body, dict) else Unavailable(service, f"{service} answered an unexpected shape")

    async def ready(self) -> dict[str, bool]:
        async def one(service: str, url: str) -> tuple[str, bool]:
            try:
                return service, (await self.client.get(url.rstrip("/") + "/readyz", timeout=2)).status_code == 200
            except httpx.HTTPError:
                return service, False

        return dict(await asyncio.gather(*(one(s, u) for s, u in self.urls.items())))

    async def close(self) -> None:
        await self.client.aclose()


def _reason(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):
            return f"{detail[0].get('field')}: {detail[0].get('reason')}"
        return str(detail)[:200]
    except (ValueError, AttributeError):
        return response.text[:200]


class LagMonitor:
    """Measures every consumer group's lag in the background; the page reads the latest measurement."""

    def __init__(self, bootstrap: str, prefix: str, groups: list[ConsumerGroup], every_seconds: float,
                 parallel: int = 4) -> None:
        self.bootstrap, self.prefix, self.groups = bootstrap, prefix, groups
        self.every_seconds = every_seconds
        self._parallel = asyncio.Semaphore(parallel)
        self.measured: dict[str, dict[str, int]] | None = None
        self.failures: dict[str, str] = {}
        self.measured_at: str | None = None  # wall clock: lag is about the system now, not about the sales
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="lag-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            try:
                await self.measure()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker may be down for a while; the page says so
                log.warning("lag measurement failed; will retry", extra={"error": repr(exc)})
            await asyncio.sleep(self.every_seconds)

    async def measure(self) -> None:
        async def one(group: ConsumerGroup) -> tuple[str, dict[str, int] | str]:
            name = self.prefix + group.group
            async with self._parallel:
                try:
                    return name, await asyncio.wait_for(
                        consumer_lag(self.bootstrap, name, [self.prefix + t for t in group.topics]), 15)
                except Exception as exc:  # one group's failure must not hide the others
                    return name, f"{type(exc).__name__}"

        results = await asyncio.gather(*(one(g) for g in self.groups))
        self.measured = {name: lag for name, lag in results if isinstance(lag, dict)}
        self.failures = {name: f"not measured: {lag}" for name, lag in results if isinstance(lag, str)}
        self.measured_at = datetime.now(UTC).isoformat(timespec="seconds")
