"""The console's door: who gets the page and the figures, and how a browser's key becomes a cookie.
The app is the real one; behind it, an in-memory stand-in for the handlers records what was asked."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from crm_shared.auth import KeyRing
from fastapi.testclient import TestClient
from ops_console.api import create_app
from ops_console.settings import OpsConsoleSettings


@dataclass
class RecordingHandlers:
    asked: list[tuple[str | None, str]] = field(default_factory=list)

    async def overview(self, store: str | None, dimension: str) -> dict[str, Any]:
        self.asked.append((store, dimension))
        return {"store": store, "dimension": dimension}


@dataclass
class InMemoryConsole:
    settings: OpsConsoleSettings
    keyring: KeyRing
    handlers: RecordingHandlers

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def readiness_checks(self) -> dict[str, Any]:
        return {}


@pytest.fixture
def console() -> tuple[TestClient, RecordingHandlers]:
    handlers = RecordingHandlers()
    service = InMemoryConsole(OpsConsoleSettings(poll_seconds=3), KeyRing.from_settings("k-ops-1234:ops", "test"), handlers)
    return TestClient(create_app(service), base_url="http://console.test"), handlers


def test_a_key_in_the_address_becomes_an_httponly_cookie_and_leaves_the_address(console: Any) -> None:
    client, handlers = console
    first = client.get("/", params={"key": "dev-ops"}, follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/"
    cookie = first.headers["set-cookie"]
    assert "crm_console_key=dev-ops" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    page = client.get("/")
    assert page.status_code == 200 and "<title>Retail CRM — ops console</title>" in page.text
    assert "const POLL_MS = 3000;" in page.text and page.headers["cache-control"] == "no-store"
    assert client.get("/v1/overview", params={"store": "or-eire", "dimension": "persona"}).json() == {
        "store": "or-eire", "dimension": "persona"}
    assert handlers.asked == [("or-eire", "persona")]


def test_without_an_ops_key_there_is_a_sign_in_page_and_no_figures(console: Any) -> None:
    client, handlers = console
    assert client.get("/").status_code == 401 and "Sign in" in client.get("/").text
    assert client.get("/", params={"key": "nobody"}).status_code == 401
    assert client.get("/", params={"key": "dev-marketing"}).status_code == 403
    assert client.get("/", headers={"x-api-key": "dev-pos-or-eire"}).status_code == 403
    assert client.get("/v1/overview").status_code == 401
    assert client.get("/v1/overview", headers={"x-api-key": "dev-marketing"}).status_code == 403
    client.cookies.set("crm_console_key", "dev-supplier-s1")
    assert client.get("/v1/overview").status_code == 403
    assert handlers.asked == []


def test_the_session_route_signs_in_and_out(console: Any) -> None:
    client, _ = console
    refused = client.post("/v1/session", json={"key": "dev-marketing"})
    assert refused.status_code == 403 and refused.json()["detail"][0]["field"] == "key"
    assert client.post("/v1/session", json={"key": "wrong"}).status_code == 401
    assert client.post("/v1/session", json={"key": "k-ops-1234"}).status_code == 204
    assert client.get("/v1/overview").status_code == 200
    assert client.delete("/v1/session").status_code == 204
    assert client.get("/v1/overview").status_code == 401


def test_a_header_key_wins_over_the_cookie_and_bad_filters_name_the_field(console: Any) -> None:
    client, _ = console
    client.cookies.set("crm_console_key", "dev-ops")
    assert client.get("/v1/overview", headers={"x-api-key": "dev-marketing"}).status_code == 403
    bad = client.get("/v1/overview", params={"dimension": "colour"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "query.dimension"
    bad = client.get("/v1/overview", params={"store": "x" * 65})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "query.store"
