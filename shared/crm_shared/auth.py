"""API keys with roles.

Keys come from `CRM_API_KEYS` as comma-separated `key:role[:scope]` entries. Roles: `pos` (scope =
the one store whose terminals use it), `ops`, `supplier` (scope = supplier id), `marketing`.
Outside production the documented dev keys also work: `dev-pos-<store_id>`, `dev-ops`,
`dev-supplier-<supplier_id>`, `dev-marketing`. With `CRM_ENV=production` dev keys are refused
and a service will not start if any configured key looks like one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import HTTPException, Request

Role = Literal["pos", "ops", "supplier", "marketing"]
ROLES: tuple[Role, ...] = ("pos", "ops", "supplier", "marketing")
SCOPED_ROLES = {"pos", "supplier"}
DEV_KEY_PREFIX = "dev-"


@dataclass(frozen=True)
class Principal:
    role: Role
    scope: str | None
    key_id: str  # a short hash of the key, safe to log

    def can_act_for_store(self, store_id: str) -> bool:
        return self.role != "pos" or self.scope == store_id


class ApiKeyError(ValueError):
    pass


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:10]


def dev_key_principal(key: str) -> Principal | None:
    if key == "dev-ops":
        return Principal("ops", None, key_id(key))
    if key == "dev-marketing":
        return Principal("marketing", None, key_id(key))
    for role in ("pos", "supplier"):
        prefix = f"dev-{role}-"
        if key.startswith(prefix) and len(key) > len(prefix):
            return Principal(role, key[len(prefix):], key_id(key))  # type: ignore[arg-type]
    return None


class KeyRing:
    def __init__(self, keys: dict[str, Principal], *, allow_dev_keys: bool) -> None:
        self._keys = keys
        self.allow_dev_keys = allow_dev_keys

    @classmethod
    def from_settings(cls, api_keys: str, env: str) -> KeyRing:
        production = env == "production"
        keys: dict[str, Principal] = {}
        for entry in filter(None, (part.strip() for part in api_keys.split(","))):
            parts = entry.split(":")
            if len(parts) not in (2, 3) or not parts[0] or parts[1] not in ROLES:
                raise ApiKeyError(f"CRM_API_KEYS entry {key_id(entry)}… must be key:role[:scope] with role in {ROLES}")
            key, role = parts[0], parts[1]
            scope = parts[2] if len(parts) == 3 else None
            if role in SCOPED_ROLES and not scope:
                raise ApiKeyError(f"a {role} key needs a scope (key:{role}:<id>)")
            if production and key.startswith(DEV_KEY_PREFIX):
                raise ApiKeyError("CRM_ENV=production refuses dev keys (keys starting with 'dev-')")
            if production and len(key) < 16:
                raise ApiKeyError("CRM_ENV=production needs API keys of at least 16 characters")
            keys[key] = Principal(role, scope, key_id(key))  # type: ignore[arg-type]
        if production and not keys:
            raise ApiKeyError("CRM_ENV=production needs CRM_API_KEYS: dev keys are refused in production")
        return cls(keys, allow_dev_keys=not production)

    def resolve(self, key: str) -> Principal | None:
        principal = self._keys.get(key)
        if principal is None and self.allow_dev_keys:
            principal = dev_key_principal(key)
        return principal


def presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def require_role(*roles: Role) -> Callable[[Request], Coroutine[Any, Any, Principal]]:
    """A FastAPI dependency: 401 without a valid key, 403 when the key's role is not one of `roles`."""

    async def dependency(request: Request) -> Principal:
        keyring: KeyRing = request.app.state.keyring
        key = presented_key(request)
        if key is None:
            raise HTTPException(401, "missing API key: send it in the X-API-Key header",
                                headers={"WWW-Authenticate": "Bearer"})
        principal = keyring.resolve(key)
        if principal is None:
            raise HTTPException(401, "unknown API key", headers={"WWW-Authenticate": "Bearer"})
        if principal.role not in roles:
            raise HTTPException(403, f"a {principal.role} key may not do this; needs one of: {', '.join(roles)}")
        request.state.principal = principal
        return principal

    return dependency
