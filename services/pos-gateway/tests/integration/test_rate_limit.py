"""Per-key rate limiting on the running gateway (real PostgreSQL, Redis and broker)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from crm_shared.testing import StackEndpoints

from .conftest import a_sale, start_gateway

pytestmark = pytest.mark.integration


def test_a_key_over_its_rate_gets_429_with_retry_after_and_others_do_not(crm_stack: StackEndpoints,
                                                                          tmp_path: Path) -> None:
    gateway = start_gateway(crm_stack, tmp_path, POS_GATEWAY_RATE_LIMIT_PER_SECOND="1",
                            POS_GATEWAY_RATE_LIMIT_BURST="3", POS_GATEWAY_LIVE_STATS_ENABLED="false")
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            pos = {"x-api-key": "dev-pos-s1"}
            answers = [client.post("/v1/sales", json=a_sale(f"rl-{i}"), headers=pos).status_code for i in range(3)]
            assert answers == [202, 202, 202]
            refused = client.post("/v1/sales", json=a_sale("rl-over"), headers=pos)
            assert refused.status_code == 429, refused.text
            assert int(refused.headers["retry-after"]) >= 1
            body = refused.json()
            assert body["error"] == "too_many_requests" and body["detail"][0]["field"] == "x-api-key"
            assert body["limit"]["requests_per_second"] == 1 and body["limit"]["burst"] == 3

            # every route of the key shares its bucket; the batch route too
            assert client.post("/v1/sales/batch", json={"sales": [a_sale("rl-b")]}, headers=pos).status_code == 429
            assert client.get("/v1/stats/live", params={"store_id": "s1"}, headers=pos).status_code == 429
            # another key has its own bucket; no key is 401 (not 429); health and metrics are never limited
            assert client.post("/v1/sales", json=a_sale("rl-ops"), headers={"x-api-key": "dev-ops"}).status_code == 202
            assert client.post("/v1/sales", json=a_sale("rl-anon")).status_code == 401
            for _ in range(10):
                assert client.get("/healthz").status_code == 200
                assert client.get("/metrics").status_code == 200

            time.sleep(float(refused.headers["retry-after"]) + 0.2)
            assert client.post("/v1/sales", json=a_sale("rl-later"), headers=pos).status_code == 202
            # the refused sale was not recorded
            assert client.get("/v1/sales/s1/rl-over", headers={"x-api-key": "dev-ops"}).status_code == 404
    finally:
        gateway.process.stop()
