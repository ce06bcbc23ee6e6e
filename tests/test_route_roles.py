"""Every route of every service, called with no key and with each role's dev key.

The expected policy is written down below as data, so a change of policy is a visible diff. Each
service's app is built by its own `bootstrap.build()` + `api.create_app()` against the real test
stack (migrated schema, real PostgreSQL and Redis; consumers off, nothing else replaced) and served
in-process through Starlette's TestClient, lifespan included. The routes come from `app.routes`:
a route missing from the matrix (or a matrix entry without a route) fails the test, so a new route
cannot escape it.

For a role that may call a route, the check is "not 401/403 and no server error": the request may
still be a 404 (unknown member) or a 422 (no body) — it got past the key check. Scoped roles call
with their own store (`s1`) or supplier (`sup1`) where the route takes one.
"""

from __future__ import annotations

import asyncio
import importlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from crm_shared.auth import ROLES
from crm_shared.kafka import ensure_topics
from crm_shared.service_main import migrate
from crm_shared.settings import CommonSettings
from crm_shared.testing import StackEndpoints
from starlette.routing import Route
from starlette.testclient import TestClient

pytestmark = pytest.mark.integration

DEV_KEYS = {"pos": "dev-pos-s1", "ops": "dev-ops", "marketing": "dev-marketing", "supplier": "dev-supplier-sup1"}
assert set(DEV_KEYS) == set(ROLES), "a role without a dev key here: add it"

# Reachable without a key on every service (FastAPI's docs routes and install_common's).
PUBLIC = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/docs"),
          ("GET", "/docs/oauth2-redirect"), ("GET", "/redoc"), ("GET", "/openapi.json")}

# Path parameters used to fill route templates: the pos key's own store, the supplier key's own id.
PATH_VALUES = {"store_id": "s1", "sale_id": "x1", "member_id": "m1", "channel": "sms", "sku": "A",
               "po_id": "po1", "supplier_id": "sup1", "segment_id": "champions", "campaign_id": "c1"}

POS, OPS, MKT, SUP = "pos", "ops", "marketing", "supplier"


@dataclass(frozen=True)
class Allowed:
    roles: frozenset[str]
    query: tuple[tuple[str, str], ...] = ()  # a pos key must name its own store on some routes


def allowed(*roles: str, **query: str) -> Allowed:
    return Allowed(frozenset(roles), tuple(query.items()))


POLICY: dict[str, dict[tuple[str, str], Allowed]] = {
    "pos_gateway": {
        ("POST", "/v1/sales"): allowed(POS, OPS),
        ("POST", "/v1/sales/batch"): allowed(POS, OPS),
        ("GET", "/v1/sales/{store_id}/{sale_id}"): allowed(POS, OPS),
        ("GET", "/v1/stats/live"): allowed(POS, OPS, store_id="s1"),
    },
    "member_profile": {
        ("POST", "/v1/members"): allowed(OPS, POS),
        ("POST", "/v1/members/lookup"): allowed(OPS, POS),
        ("GET", "/v1/members/{member_id}"): allowed(OPS, MKT, POS),
        ("PATCH", "/v1/members/{member_id}"): allowed(OPS, POS),
        ("PUT", "/v1/members/{member_id}/consents/{channel}"): allowed(OPS, POS),
        ("DELETE", "/v1/members/{member_id}"): allowed(OPS),
        ("GET", "/v1/members/{member_id}/profile"): allowed(OPS, MKT),
        ("GET", "/v1/members/{member_id}/history"): allowed(OPS, MKT),
        ("GET", "/v1/members"): allowed(OPS, MKT),
        ("GET", "/v1/members/{member_id}/points"): allowed(OPS, MKT, POS),
        ("POST", "/v1/members/{member_id}/points/redeem"): allowed(OPS, POS),
        ("GET", "/v1/call-list"): allowed(OPS, POS, store="s1"),
    },
    "segmenter": {
        ("GET", "/v1/segments"): allowed(OPS, MKT),
        ("GET", "/v1/segment-sizes"): allowed(OPS, MKT),
        ("GET", "/v1/segments/{segment_id}"): allowed(OPS, MKT),
        ("GET", "/v1/segments/{segment_id}/members"): allowed(OPS, MKT),
        ("GET", "/v1/members/{member_id}/segments"): allowed(OPS, MKT),
        ("GET", "/v1/rules"): allowed(OPS, MKT, POS, store="s1"),
        ("GET", "/v1/products/{sku}/bought-with"): allowed(OPS, MKT, POS, store="s1"),
        ("GET", "/v1/products/top"): allowed(OPS, MKT, POS, store="s1"),
        ("GET", "/v1/products/slow"): allowed(OPS, MKT, POS, store="s1"),
        ("GET", "/v1/products/{sku}/seasonality"): allowed(OPS, MKT, POS, store="s1"),
    },
    "replenishment": {
        ("GET", "/v1/stock/{store_id}/{sku}"): allowed(OPS, POS),
        ("GET", "/v1/stock"): allowed(OPS, below="reorder_point"),
        ("GET", "/v1/stock/{store_id}"): allowed(OPS, POS, below="reorder_point"),
        ("POST", "/v1/stock/counts"): allowed(OPS, POS),
        ("POST", "/v1/receipts"): allowed(OPS, POS),
        ("GET", "/v1/orders"): allowed(OPS),
        ("GET", "/v1/orders/overdue"): allowed(OPS),
        ("GET", "/v1/orders/{po_id}"): allowed(OPS, SUP),
        ("GET", "/v1/orders/{po_id}/edifact"): allowed(OPS, SUP),
        ("POST", "/v1/orders/{po_id}/close"): allowed(OPS),
        ("POST", "/v1/suppliers/orders/{po_id}/ack"): allowed(SUP),
        ("POST", "/v1/suppliers/orders/{po_id}/ship"): allowed(SUP),
        ("GET", "/v1/suppliers/me/orders"): allowed(SUP),
        ("GET", "/v1/suppliers/me/stock"): allowed(SUP),
        ("GET", "/v1/suppliers/me/sell-through"): allowed(SUP),
    },
    "notifier": {
        ("GET", "/v1/campaigns"): allowed(MKT, OPS),
        ("PUT", "/v1/campaigns/{campaign_id}"): allowed(MKT),
        ("GET", "/v1/campaigns/{campaign_id}"): allowed(MKT, OPS),
        ("POST", "/v1/campaigns/{campaign_id}/start"): allowed(MKT),
        ("POST", "/v1/campaigns/{campaign_id}/stop"): allowed(MKT),
        ("POST", "/v1/campaigns/{campaign_id}/preview"): allowed(MKT),
        ("GET", "/v1/campaigns/{campaign_id}/report"): allowed(MKT, OPS),
        ("GET", "/v1/members/{member_id}/offers"): allowed(MKT, OPS),
    },
    "ops_console": {
        ("GET", "/"): allowed(OPS),
        ("GET", "/v1/overview"): allowed(OPS),
    },
}

# Routes that check a key their own way, each covered by a test of its own below.
OWN_CHECK: dict[str, set[tuple[str, str]]] = {
    "ops_console": {("POST", "/v1/session"),  # sign-in: the key is in the body
                    ("DELETE", "/v1/session")},  # sign-out: forgets the cookie, needs nothing
}

# Service-specific settings for an in-process app: consumers and background work off (the key
# check is in front of them; they only slow the test down).
SETTINGS_OVERRIDES: dict[str, dict[str, Any]] = {
    "pos_gateway": {"background": "inline", "relay_enabled": False, "live_stats_enabled": False},
    "member_profile": {"consumer_enabled": False},
    "segmenter": {"consumer_enabled": False},
    "replenishment": {"consumer_enabled": False},
    "notifier": {"consumer_enabled": False},
    "ops_console": {},
}
SETTINGS_CLASSES = {"pos_gateway": "GatewaySettings", "member_profile": "MemberProfileSettings",
                    "segmenter": "SegmenterSettings", "replenishment": "ReplenishmentSettings",
                    "notifier": "NotifierSettings", "ops_console": "OpsConsoleSettings"}


def routes_of(app: Any) -> set[tuple[str, str]]:
    """(method, path) of every HTTP route, routers included (FastAPI keeps an included router as one
    entry with its `original_router`), plus the gateway's directly served ingest endpoints."""
    found: set[tuple[str, str]] = set()

    def walk(routes: list[Any], prefix: str) -> None:
        for route in routes:
            if isinstance(route, Route):
                found.update((m, prefix + route.path) for m in route.methods or () if m != "HEAD")
            elif hasattr(route, "original_router"):
                walk(route.original_router.routes, prefix + getattr(route.include_context, "prefix", ""))
            else:
                raise AssertionError(f"a route of a kind this test does not know: {route!r}")

    walk(app.routes, "")
    found.update(getattr(app, "direct_endpoints", {}))
    return found


def fill(template: str) -> str:
    path = template
    for name, value in PATH_VALUES.items():
        path = path.replace("{" + name + "}", value)
    assert "{" not in path, f"no value for a parameter of {template}: add it to PATH_VALUES"
    return path


class RunningApps:
    """Each service's app, started on first use; one that cannot start fails its own tests only."""

    def __init__(self, endpoints: StackEndpoints) -> None:
        self.prefix = f"rr{uuid.uuid4().hex[:6]}."
        asyncio.run(ensure_topics(endpoints.kafka_bootstrap, prefix=self.prefix, partitions=1))
        self.common = CommonSettings(env="test", kafka_bootstrap=endpoints.kafka_bootstrap,
                                     database_url=endpoints.database_url, redis_url=endpoints.redis_url,
                                     topic_prefix=self.prefix, api_keys="")
        self.clients: dict[str, TestClient] = {}

    def __getitem__(self, module: str) -> TestClient:
        if module not in self.clients:
            settings_class = getattr(importlib.import_module(f"{module}.settings"), SETTINGS_CLASSES[module])
            schema = {"schema_name": f"{module}_{uuid.uuid4().hex[:8]}"} if "schema_name" in settings_class.model_fields else {}
            settings = settings_class(**schema, **SETTINGS_OVERRIDES[module])
            if schema:
                migrate(self.common, settings)
            service = importlib.import_module(f"{module}.bootstrap").build(self.common, settings)
            app = importlib.import_module(f"{module}.api").create_app(service)
            client = TestClient(app, raise_server_exceptions=False)
            client.__enter__()  # runs the app's lifespan: the service starts as it does under uvicorn
            self.clients[module] = client
        return self.clients[module]

    def close(self) -> None:
        for client in self.clients.values():
            client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def apps(crm_stack: StackEndpoints) -> Iterator[RunningApps]:
    running = RunningApps(crm_stack)
    try:
        yield running
    finally:
        running.close()


@pytest.mark.parametrize("module", list(POLICY))
def test_the_matrix_names_every_route(apps: RunningApps, module: str) -> None:
    routes = routes_of(apps[module].app)
    assert PUBLIC & routes >= {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")}
    own = OWN_CHECK.get(module, set())
    assert own <= routes, "OWN_CHECK names routes the app does not have"
    assert routes - PUBLIC - own - set(POLICY[module]) == set(), "routes with no expected policy: add them to POLICY"
    assert set(POLICY[module]) - routes == set(), "POLICY names routes the app does not have"


@pytest.mark.parametrize("module", list(POLICY))
def test_every_route_checks_the_key_and_the_role(apps: RunningApps, module: str) -> None:
    client = apps[module]
    wrong: list[str] = []
    for (method, template), policy in sorted(POLICY[module].items()):
        path, params = fill(template), dict(policy.query)
        anonymous = client.request(method, path, params=params)
        if anonymous.status_code != 401:
            wrong.append(f"{method} {template} without a key: {anonymous.status_code}, expected 401")
        unknown = client.request(method, path, params=params, headers={"x-api-key": "not-a-key"})
        if unknown.status_code != 401:
            wrong.append(f"{method} {template} with an unknown key: {unknown.status_code}, expected 401")
        for role, key in DEV_KEYS.items():
            answer = client.request(method, path, params=params, headers={"x-api-key": key})
            if role in policy.roles:
                if answer.status_code in (401, 403) or answer.status_code >= 500:
                    wrong.append(f"{method} {template} as {role}: {answer.status_code} {answer.text[:120]}, "
                                 "expected to get past the key check")
            elif answer.status_code != 403:
                wrong.append(f"{method} {template} as {role}: {answer.status_code}, expected 403")
    assert wrong == []


@pytest.mark.parametrize("module", list(POLICY))
def test_public_routes_need_no_key(apps: RunningApps, module: str) -> None:
    client = apps[module]
    for method, path in sorted(PUBLIC & routes_of(client.app)):
        if path == "/readyz":
            continue  # 200 or 503 by the dependencies; never a key question, checked below
        answer = client.request(method, path)
        assert answer.status_code == 200, f"{module} {method} {path}: {answer.status_code}"
    assert client.get("/readyz").status_code in (200, 503)


def test_a_pos_key_cannot_act_for_another_store(apps: RunningApps) -> None:
    other = {"x-api-key": "dev-pos-s2"}
    assert apps["pos_gateway"].get("/v1/sales/s1/x1", headers=other).status_code == 403
    assert apps["replenishment"].get("/v1/stock/s1/A", headers=other).status_code == 403
    assert apps["segmenter"].get("/v1/rules", params={"store": "s1"}, headers=other).status_code == 403
    assert apps["segmenter"].get("/v1/rules", headers=other).status_code == 403  # not the chain's either
    assert apps["member_profile"].get("/v1/call-list", params={"store": "s1"}, headers=other).status_code == 403


def test_every_service_has_a_policy() -> None:
    from crm_shared.services import installed_services

    assert {spec.module for spec in installed_services()} <= set(POLICY), "a service without a route matrix here"


def test_the_ops_console_signs_in_ops_keys_only(apps: RunningApps) -> None:
    client = apps["ops_console"]
    assert client.post("/v1/session", json={"key": "not-a-key"}).status_code == 401
    for role, key in DEV_KEYS.items():
        answer = client.post("/v1/session", json={"key": key})
        assert answer.status_code == (204 if role == "ops" else 403), (role, answer.status_code)
    signed_in = client.post("/v1/session", json={"key": "dev-ops"})
    assert "httponly" in signed_in.headers["set-cookie"].lower()
    assert client.get("/v1/overview").status_code not in (401, 403)  # the cookie carries the key
    assert client.delete("/v1/session").status_code == 204  # sign-out needs no key
    client.cookies.clear()
    assert client.get("/v1/overview").status_code == 401
