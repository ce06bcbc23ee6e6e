"""One function per query or event: load, decide with the domain, save, emit."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from crm_shared.events import Envelope, Sale
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from member_profile import store
from member_profile.cache import ProfileCache
from member_profile.domain import Profile, profile_view


class ProfileHandlers:
    def __init__(self, engine: AsyncEngine, cache: ProfileCache) -> None:
        self.engine = engine
        self.cache = cache

    async def apply_sales(self, conn: AsyncConnection, events: list[Envelope[Sale]]) -> tuple[list[Profile], datetime | None]:
        """Inside the consumer's transaction: the effect and the record of applied ids commit together."""
        changed = await store.apply_sales(conn, events)
        return changed, await store.as_of(conn)

    async def after_commit(self, outcome: tuple[list[Profile], datetime | None]) -> None:
        """Refresh the read cache once the batch is durable (a crash before this only leaves it stale)."""
        changed, as_of = outcome
        await self.cache.put(changed, as_of)

    async def profile(self, member_id: str) -> dict[str, Any] | None:
        cached, as_of = await self.cache.get(member_id)
        if cached is not None and as_of is not None:
            return profile_view(cached, as_of)
        async with self.engine.connect() as conn:
            found = await store.load_profiles(conn, [member_id])
            as_of = await store.as_of(conn)
        profile = found.get(member_id)
        if profile is None:
            return None
        await self.cache.put([profile], as_of)
        return profile_view(profile, as_of)

    async def history(self, member_id: str, limit: int, before: datetime | None) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            return await store.history(conn, member_id, limit=limit, before=before)

    async def members(self, min_monetary: Decimal | None, limit: int, offset: int) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            found = await store.top_members(conn, min_monetary=min_monetary, limit=limit, offset=offset)
            as_of = await store.as_of(conn)
        return {"as_of": as_of, "limit": limit, "offset": offset, "members": [profile_view(p, as_of) for p in found]}
