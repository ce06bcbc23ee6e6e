from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from crm_shared.embedded import free_port
from crm_shared.kafka import ensure_topics
from crm_shared.processes import ServiceProcess
from crm_shared.testing import StackEndpoints
from crm_shared.topics import POS_SALES


@dataclass
class GatewayUnderTest:
    process: ServiceProcess
    bootstrap: str
    prefix: str
    schema: str
    env: dict[str, str]

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def sales_topic(self) -> str:
        return POS_SALES.qualified(self.prefix)

    @property
    def dlq_topic(self) -> str:
        return POS_SALES.dlq(self.prefix)

    def post(self, body: Any, *, key: str = "dev-ops", path: str = "/v1/sales") -> httpx.Response:
        return httpx.post(self.url + path, json=body, headers={"x-api-key": key}, timeout=30)


def gateway_env(endpoints: StackEndpoints, *, prefix: str, schema: str, port: int, **extra: str) -> dict[str, str]:
    return {**endpoints.env(), "CRM_TOPIC_PREFIX": prefix, "POS_GATEWAY_SCHEMA_NAME": schema,
            "POS_GATEWAY_PORT": str(port), "CRM_ENV": "test", "POS_GATEWAY_RELAY_IDLE_POLL_SECONDS": "0.05", **extra}


def start_gateway(endpoints: StackEndpoints, tmp: Path, *, bootstrap: str | None = None, prefix: str | None = None,
                  schema: str | None = None, **extra: str) -> GatewayUnderTest:
    prefix = prefix or f"t{uuid.uuid4().hex[:8]}."
    schema = schema or f"pos_gateway_{uuid.uuid4().hex[:8]}"
    bootstrap = bootstrap or endpoints.kafka_bootstrap
    asyncio.run(ensure_topics(bootstrap, prefix=prefix, partitions=3))
    port = free_port()
    env = gateway_env(endpoints, prefix=prefix, schema=schema, port=port, CRM_KAFKA_BOOTSTRAP=bootstrap, **extra)
    process = ServiceProcess("pos_gateway", env, port=port, log_path=tmp / f"gateway-{port}.log").start()
    return GatewayUnderTest(process, bootstrap, prefix, schema, env)


@pytest.fixture(scope="module")
def gateway(crm_stack: StackEndpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayUnderTest]:
    under_test = start_gateway(crm_stack, tmp_path_factory.mktemp("gateway"))
    yield under_test
    under_test.process.stop()


def a_sale(sale_id: str | None = None, *, store: str = "s1", member: str | None = "m1", kind: str = "sale",
           lines: list[dict[str, Any]] | None = None, when: datetime | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "sale_id": sale_id or uuid.uuid4().hex[:12], "store_id": store, "terminal_id": "till-1", "member_id": member,
        "occurred_at": (when or datetime(2010, 12, 1, 9, 30, tzinfo=UTC)).isoformat(), "currency": "GBP",
        "kind": kind,
        "lines": lines or [{"sku": "85123A", "description": "WHITE HANGING HEART T-LIGHT HOLDER", "quantity": 6,
                            "unit_price": "2.55"},
                           {"sku": "71053", "description": "WHITE METAL LANTERN", "quantity": 6, "unit_price": "3.39",
                            "discount": "0.50"}],
        **extra,
    }


def now_plus(hours: float) -> datetime:
    return datetime.now(UTC) + timedelta(hours=hours)
