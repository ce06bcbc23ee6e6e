"""Profiles in Redis for fast reads; PostgreSQL stays the record (a miss falls back to it)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from redis.asyncio import Redis

from member_profile.domain import Profile, Rhythm


def encode_profile(profile: Profile) -> bytes:
    return orjson.dumps({
        **{k: v for k, v in profile.__dict__.items() if k not in ("rhythm", "rhythm_needs_rebuild")},
        "monetary": str(profile.monetary), "gross_sales": str(profile.gross_sales),
        "discount_total": str(profile.discount_total),
        "rhythm": [profile.rhythm.last_visit_day, profile.rhythm.intervals, profile.rhythm.mean_days, profile.rhythm.m2],
    })


def decode_profile(raw: bytes) -> Profile:
    data: dict[str, Any] = orjson.loads(raw)
    last_day, intervals, mean, m2 = data.pop("rhythm")
    for name in ("monetary", "gross_sales", "discount_total"):
        data[name] = Decimal(data[name])
    for name in ("first_purchase_at", "last_purchase_at"):
        data[name] = datetime.fromisoformat(data[name]) if data[name] else None
    from datetime import date

    return Profile(**data, rhythm=Rhythm(date.fromisoformat(last_day) if last_day else None, intervals, mean, m2))


@dataclass(frozen=True)
class LoyaltyState:
    """What a read needs to show tier and points without the database: the balance is worked out at
    read time from the lots, so points that lapse as event time moves on stop counting."""

    tier: str
    lots: tuple[tuple[int, datetime], ...]  # (remaining, expires_at)

    def balance(self, as_of: datetime) -> int:
        return sum(remaining for remaining, expires in self.lots if expires > as_of)


class ProfileCache:
    def __init__(self, redis: Redis, *, prefix: str, ttl_seconds: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl = ttl_seconds

    async def put(self, profiles: list[Profile], as_of: datetime | None, loyalty: dict[str, LoyaltyState]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for profile in profiles:
                state = loyalty.get(profile.member_id, LoyaltyState("member", ()))
                blob = orjson.dumps({"profile": orjson.Fragment(encode_profile(profile)), "tier": state.tier,
                                     "lots": [[r, e.isoformat()] for r, e in state.lots]})
                pipe.set(f"{self.prefix}profile:{profile.member_id}", blob, ex=self.ttl)
            if as_of is not None:
                pipe.set(f"{self.prefix}as_of", as_of.isoformat())
            await pipe.execute()

    async def get(self, member_id: str) -> tuple[Profile | None, LoyaltyState | None, datetime | None]:
        raw, as_of = await self.redis.mget(f"{self.prefix}profile:{member_id}", f"{self.prefix}as_of")
        when = datetime.fromisoformat(as_of.decode() if isinstance(as_of, bytes) else as_of) if as_of else None
        if not raw:
            return None, None, when
        data = orjson.loads(raw)
        state = LoyaltyState(data["tier"], tuple((r, datetime.fromisoformat(e)) for r, e in data["lots"]))
        return decode_profile(orjson.dumps(data["profile"])), state, when

    async def forget(self, member_id: str) -> None:
        await self.redis.delete(f"{self.prefix}profile:{member_id}")
