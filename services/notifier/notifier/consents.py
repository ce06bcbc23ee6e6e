"""Consent per channel, as member-profile holds it (its `GET /v1/members/{id}`), remembered a short while.

Consent is not on a topic today: member-profile keeps it in its database and serves it on its API.
A member-profile that cannot be reached means "unknown", and the guard treats unknown as no.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import httpx

log = logging.getLogger(__name__)

Consents = dict[str, bool] | None  # channel -> granted; None = could not be learned


class ConsentBook:
    def __init__(self, base_url: str, api_key: str, *, ttl: float, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.ttl = ttl
        self.timeout = timeout
        self._cache: dict[str, tuple[float, dict[str, bool]]] = {}
        self._client: httpx.AsyncClient | None = None
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one info line per lookup would drown the log

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(base_url=self.base_url, headers={"x-api-key": self.api_key},
                                             timeout=self.timeout, limits=httpx.Limits(max_connections=20))
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    def forget(self, member_id: str) -> None:
        self._cache.pop(member_id, None)

    async def lookup(self, member_ids: Sequence[str]) -> dict[str, Consents]:
        now = time.monotonic()
        out: dict[str, Consents] = {}
        missing = []
        for member_id in dict.fromkeys(member_ids):
            cached = self._cache.get(member_id)
            if cached is not None and cached[0] > now:
                out[member_id] = cached[1]
            else:
                missing.append(member_id)
        if missing:
            answers = await asyncio.gather(*(self._fetch(m) for m in missing))
            for member_id, answer in zip(missing, answers, strict=True):
                out[member_id] = answer
                if answer is not None and self.ttl > 0:
                    self._cache[member_id] = (now + self.ttl, answer)
        return out

    async def _fetch(self, member_id: str) -> Consents:
        try:
            response = await self._http().get(f"/v1/members/{member_id}")
        except httpx.HTTPError as exc:
            log.warning("member-profile unreachable for consent", extra={"error": repr(exc)})
            return None
        if response.status_code == 404:
            return {}  # not enrolled: nobody asked them, so no channel may be used
        if response.status_code != 200:
            log.warning("member-profile refused a consent lookup", extra={"status": response.status_code})
            return None
        consents = response.json().get("consents") or {}
        return {channel: bool(entry.get("granted")) for channel, entry in consents.items()}
