"""Live sales figures in Redis, in hourly buckets of event time.

Each sale is applied once: the Lua script marks its event id as seen and adds its figures in one
atomic step, so a redelivered event changes nothing; one call carries a whole batch of sales.
Money is kept in 1/10000 units (exact).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from crm_shared.events import Envelope, Sale
from redis.asyncio import Redis

from pos_gateway.domain import hour_bucket, money_units, units_to_money, window_buckets

# ARGV[1] is the key prefix, ARGV[2] a JSON array with one [event id, store, hour bucket,
# "sales"|"returns", revenue units, event time (epoch s), [[sku, quantity], ...]] per sale; numbers
# travel as strings (Lua numbers are doubles). Keys touched by the batch get their TTL once, at the end.
APPLY_SALES = """
local p = ARGV[1]
local ttl = 691200
local applied = 0
local touched, stores = {}, {}
local latest = tonumber(redis.call('GET', p .. 'latest') or '-1')
local newest = latest
for _, sale in ipairs(cjson.decode(ARGV[2])) do
  local event_id, store, bucket, kind, revenue, at, skus = unpack(sale)
  if redis.call('SET', p .. 'seen:' .. event_id, '1', 'NX', 'EX', 1209600) then
    applied = applied + 1
    local h = p .. 'h:' .. store .. ':' .. bucket
    redis.call('HINCRBY', h, kind, 1)
    redis.call('HINCRBY', h, 'revenue_units', revenue)
    stores[store] = true
    if tonumber(at) > newest then newest = tonumber(at) end
    local chain = p .. 'skus:' .. bucket
    local local_ = p .. 'skus:' .. store .. ':' .. bucket
    for _, pair in ipairs(skus) do
      redis.call('ZINCRBY', chain, pair[2], pair[1])
      redis.call('ZINCRBY', local_, pair[2], pair[1])
    end
    touched[h], touched[chain], touched[local_] = true, true, true
  end
end
for key in pairs(touched) do redis.call('EXPIRE', key, ttl) end
for store in pairs(stores) do redis.call('SADD', p .. 'stores', store) end
if newest > latest then redis.call('SET', p .. 'latest', string.format('%d', newest)) end
return applied
"""


@dataclass(frozen=True)
class HourFigures:
    hour: datetime
    sales: int
    returns: int
    revenue: Decimal


class LiveStats:
    def __init__(self, redis: Redis, *, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._script = redis.register_script(APPLY_SALES)

    async def apply(self, events: list[Envelope[Sale]]) -> int:
        """Add each sale's figures once; returns how many were new. One script call per batch."""
        if not events:
            return 0
        batch = []
        for event in events:
            sale = event.payload
            sign = -1 if sale.kind == "return" else 1
            skus: dict[str, int] = {}
            for line in sale.lines:
                skus[line.sku] = skus.get(line.sku, 0) + sign * line.quantity
            batch.append((str(event.event_id), sale.store_id, hour_bucket(sale.occurred_at),
                          "returns" if sale.kind == "return" else "sales", str(money_units(sale.total)),
                          str(int(sale.occurred_at.timestamp())), [(sku, str(q)) for sku, q in skus.items()]))
        return int(await self._script(keys=[], args=[self.prefix, orjson.dumps(batch)]))

    async def latest_event_time(self) -> datetime | None:
        raw = await self.redis.get(self.prefix + "latest")
        return None if raw is None else datetime.fromtimestamp(int(raw), UTC)

    async def window(self, *, hours: int, store_id: str | None, top: int) -> dict[str, Any]:
        latest = await self.latest_event_time()
        if latest is None:
            return {"as_of": None, "window_hours": hours, "stores": [], "top_skus": []}
        buckets = window_buckets(latest, hours)
        if store_id is not None:
            stores = [store_id]
        else:
            stores = sorted(m.decode() if isinstance(m, bytes) else m for m in await self.redis.smembers(self.prefix + "stores"))
        async with self.redis.pipeline(transaction=False) as pipe:
            for store in stores:
                for bucket in buckets:
                    pipe.hgetall(f"{self.prefix}h:{store}:{bucket}")
            raw = await pipe.execute()
        per_store = []
        position = 0
        for store in stores:
            hours_out = []
            for bucket in buckets:
                figures = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw[position].items()}
                position += 1
                if figures:
                    hours_out.append(HourFigures(datetime.strptime(bucket, "%Y%m%d%H").replace(tzinfo=UTC),
                                                 figures.get("sales", 0), figures.get("returns", 0),
                                                 units_to_money(figures.get("revenue_units", 0))))
            if hours_out or store_id is not None:
                hours_out.sort(key=lambda h: h.hour)
                per_store.append({"store_id": store, "hours": hours_out,
                                  "sales": sum(h.sales for h in hours_out), "returns": sum(h.returns for h in hours_out),
                                  "revenue": sum((h.revenue for h in hours_out), Decimal("0"))})
        zkeys = [f"{self.prefix}skus:{store_id}:{b}" if store_id else f"{self.prefix}skus:{b}" for b in buckets]
        ranked = await self.redis.zunion(zkeys, withscores=True) if zkeys else []
        ranked = sorted(ranked, key=lambda pair: (-pair[1], pair[0]))[:top]
        top_skus = [{"sku": sku.decode() if isinstance(sku, bytes) else sku, "quantity": int(score)}
                    for sku, score in ranked if score > 0]
        return {"as_of": latest, "window_hours": hours, "stores": per_store, "top_skus": top_skus}
