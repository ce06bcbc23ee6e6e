"""One function per command: check with the domain, record in the ledger, report the outcome."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from crm_shared.auth import Principal
from crm_shared.events import Sale
from sqlalchemy.ext.asyncio import AsyncEngine

from pos_gateway.cache import LiveStats
from pos_gateway.domain import Refusal, check_scope, check_timing
from pos_gateway.store import Outcome, SaleWriter, find_sale


def wall_clock() -> datetime:
    return datetime.now(UTC)


class GatewayHandlers:
    def __init__(self, writer: SaleWriter, engine: AsyncEngine, live_stats: LiveStats, *, max_future: timedelta,
                 clock: Callable[[], datetime] = wall_clock) -> None:
        self.writer = writer
        self.engine = engine
        self.live_stats = live_stats
        self.max_future = max_future
        self.clock = clock

    def _precheck(self, sale: Sale, principal: Principal) -> Refusal | None:
        # Receipt time is the one wall-clock fact the gateway uses: a sale cannot come from tomorrow.
        return (check_scope(sale, principal.scope if principal.role == "pos" else None)
                or check_timing(sale, now=self.clock(), max_future=self.max_future))

    async def record_sale(self, sale: Sale, principal: Principal) -> Outcome:
        refusal = self._precheck(sale, principal)
        if refusal is not None:
            return refusal
        return await self.writer.record(sale)

    async def record_batch(self, items: Sequence[Sale | Refusal], principal: Principal) -> list[Outcome]:
        """Per-item outcomes for a terminal catching up after being offline; one bad sale spoils nothing."""
        outcomes: list[Outcome | None] = []
        to_record: list[tuple[int, Sale]] = []
        for index, item in enumerate(items):
            if isinstance(item, Refusal):
                outcomes.append(item)
                continue
            refusal = self._precheck(item, principal)
            outcomes.append(refusal)
            if refusal is None:
                to_record.append((index, item))
        recorded = await self.writer.record_many([sale for _, sale in to_record])
        for (index, _), outcome in zip(to_record, recorded, strict=True):
            outcomes[index] = outcome
        return [outcome for outcome in outcomes if outcome is not None]

    async def get_sale(self, store_id: str, sale_id: str, principal: Principal) -> dict[str, Any] | Refusal:
        if principal.role == "pos" and principal.scope != store_id:
            return Refusal(403, "forbidden", "store_id", f"this key is for store {principal.scope!r}, not {store_id!r}")
        found = await find_sale(self.engine, store_id, sale_id)
        if found is None:
            return Refusal(404, "not_found", "sale_id", f"no sale {sale_id!r} recorded for store {store_id!r}")
        return found

    async def live_figures(self, principal: Principal, store_id: str | None, hours: int, top: int) -> dict[str, Any] | Refusal:
        if principal.role == "pos":
            if store_id is not None and store_id != principal.scope:
                return Refusal(403, "forbidden", "store_id", f"this key is for store {principal.scope!r}, not {store_id!r}")
            store_id = principal.scope
        return await self.live_stats.window(hours=hours, store_id=store_id, top=top)
