"""API keys: who may call what, and what production refuses to start with."""

from __future__ import annotations

from typing import Annotated

import pytest
from crm_shared.auth import ApiKeyError, KeyRing, Principal, presented_key, require_role
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from starlette.requests import Request

PROD_OPS_KEY = "ops-key-0123456789abcdef"
PROD_POS_KEY = "pos-key-0123456789abcdef"


# --- dev keys ----------------------------------------------------------------------------------


def test_dev_keys_work_outside_production() -> None:
    keyring = KeyRing.from_settings("", "development")

    pos = keyring.resolve("dev-pos-s7")
    assert pos is not None and (pos.role, pos.scope) == ("pos", "s7")
    assert pos.can_act_for_store("s7") and not pos.can_act_for_store("s8")

    ops = keyring.resolve("dev-ops")
    assert ops is not None and (ops.role, ops.scope) == ("ops", None)
    assert ops.can_act_for_store("s8")

    marketing = keyring.resolve("dev-marketing")
    assert marketing is not None and (marketing.role, marketing.scope) == ("marketing", None)

    supplier = keyring.resolve("dev-supplier-acme")
    assert supplier is not None and (supplier.role, supplier.scope) == ("supplier", "acme")


@pytest.mark.parametrize("key", ["dev-pos-", "dev-supplier-", "dev-admin", "dev-", "ops", "random"])
def test_malformed_or_unknown_dev_keys_are_not_recognised(key: str) -> None:
    assert KeyRing.from_settings("", "development").resolve(key) is None


@pytest.mark.parametrize("key", ["dev-pos-s7", "dev-ops", "dev-marketing", "dev-supplier-acme"])
def test_dev_keys_are_refused_in_production(key: str) -> None:
    keyring = KeyRing.from_settings(f"{PROD_OPS_KEY}:ops", "production")

    assert keyring.resolve(key) is None
    assert keyring.resolve(PROD_OPS_KEY) is not None


def test_a_key_id_never_reveals_the_key() -> None:
    keyring = KeyRing.from_settings("", "development")
    ops, marketing = keyring.resolve("dev-ops"), keyring.resolve("dev-marketing")

    assert ops is not None and marketing is not None
    assert "dev-ops" not in ops.key_id
    assert ops.key_id != marketing.key_id


# --- configured keys ---------------------------------------------------------------------------


def test_configured_keys_parse_role_and_scope() -> None:
    keyring = KeyRing.from_settings(" k-pos:pos:s7 , k-ops:ops,k-sup:supplier:acme,k-mkt:marketing ,", "development")

    assert [(p.role, p.scope) for p in map(keyring.resolve, ["k-pos", "k-ops", "k-sup", "k-mkt"]) if p] == [
        ("pos", "s7"), ("ops", None), ("supplier", "acme"), ("marketing", None)]
    assert keyring.resolve("k-unknown") is None


def test_configured_keys_work_in_production() -> None:
    keyring = KeyRing.from_settings(f"{PROD_POS_KEY}:pos:s7,{PROD_OPS_KEY}:ops", "production")

    pos = keyring.resolve(PROD_POS_KEY)
    assert pos is not None and (pos.role, pos.scope) == ("pos", "s7")


@pytest.mark.parametrize("entry", [
    "k:admin",          # unknown role
    "k:pos",            # pos needs its store
    "k:pos:",           # ... and an empty store is no store
    "k:supplier",       # supplier needs its supplier id
    "k",                # no role at all
    ":ops",             # no key
    "k:ops:x:y",        # too many parts
    "k:OPS",            # roles are lower case
])
def test_a_malformed_key_entry_is_refused(entry: str) -> None:
    with pytest.raises(ApiKeyError):
        KeyRing.from_settings(f"good:ops,{entry}", "development")


def test_a_malformed_entry_does_not_leak_the_key_in_the_error() -> None:
    with pytest.raises(ApiKeyError) as caught:
        KeyRing.from_settings("s3cr3t-value:admin", "development")
    assert "s3cr3t-value" not in str(caught.value)


@pytest.mark.parametrize("api_keys", ["", " ", ",,"])
def test_production_refuses_to_start_without_keys(api_keys: str) -> None:
    with pytest.raises(ApiKeyError, match="production"):
        KeyRing.from_settings(api_keys, "production")


def test_production_refuses_a_configured_key_that_looks_like_a_dev_key() -> None:
    with pytest.raises(ApiKeyError, match="dev"):
        KeyRing.from_settings(f"{PROD_OPS_KEY}:ops,dev-pos-s7-0123456789:pos:s7", "production")


def test_production_refuses_a_short_key() -> None:
    with pytest.raises(ApiKeyError, match="16"):
        KeyRing.from_settings("short:ops", "production")


# --- presenting a key --------------------------------------------------------------------------


def request_with(*headers: tuple[str, str]) -> Request:
    scope = {
        "type": "http", "method": "GET", "path": "/", "query_string": b"",
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers],
    }
    return Request(scope)


@pytest.mark.parametrize("headers,expected", [
    ([("X-API-Key", "dev-ops")], "dev-ops"),
    ([("X-API-Key", "  dev-ops  ")], "dev-ops"),
    ([("Authorization", "Bearer dev-ops")], "dev-ops"),
    ([("Authorization", "bearer dev-ops")], "dev-ops"),
    ([("X-API-Key", "dev-pos-s7"), ("Authorization", "Bearer dev-ops")], "dev-pos-s7"),
    ([("X-API-Key", ""), ("Authorization", "Bearer dev-ops")], "dev-ops"),
    ([("Authorization", "Basic ZGV2LW9wczo=")], None),
    ([("Authorization", "Bearer ")], None),
    ([("Authorization", "Bearer")], None),
    ([], None),
])
def test_the_key_is_taken_from_x_api_key_or_a_bearer_token(headers: list[tuple[str, str]], expected: str | None) -> None:
    assert presented_key(request_with(*headers)) == expected


# --- require_role ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    app.state.keyring = KeyRing.from_settings("k-ops:ops", "development")

    @app.get("/ops-only")
    async def ops_only(principal: Annotated[Principal, Depends(require_role("ops"))]) -> dict[str, str | None]:
        return {"role": principal.role, "scope": principal.scope}

    @app.get("/pos-or-ops")
    async def pos_or_ops(principal: Annotated[Principal, Depends(require_role("pos", "ops"))]) -> dict[str, str | None]:
        return {"role": principal.role, "scope": principal.scope}

    return TestClient(app)


def test_no_key_is_401(client: TestClient) -> None:
    response = client.get("/ops-only")

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "X-API-Key" in response.json()["detail"]


def test_an_unknown_key_is_401(client: TestClient) -> None:
    response = client.get("/ops-only", headers={"X-API-Key": "nobody"})

    assert response.status_code == 401
    assert "unknown" in response.json()["detail"]


def test_the_wrong_role_is_403(client: TestClient) -> None:
    response = client.get("/ops-only", headers={"X-API-Key": "dev-marketing"})

    assert response.status_code == 403
    assert "marketing" in response.json()["detail"] and "ops" in response.json()["detail"]


def test_the_right_role_is_let_in(client: TestClient) -> None:
    by_header = client.get("/ops-only", headers={"X-API-Key": "k-ops"})
    by_bearer = client.get("/ops-only", headers={"Authorization": "Bearer dev-ops"})
    pos = client.get("/pos-or-ops", headers={"X-API-Key": "dev-pos-s7"})

    assert (by_header.status_code, by_header.json()) == (200, {"role": "ops", "scope": None})
    assert (by_bearer.status_code, by_bearer.json()) == (200, {"role": "ops", "scope": None})
    assert (pos.status_code, pos.json()) == (200, {"role": "pos", "scope": "s7"})
