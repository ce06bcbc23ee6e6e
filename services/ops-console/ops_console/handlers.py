"""One handler: ask every service at once, let the domain shape the panels, share the answer briefly."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ops_console import domain
from ops_console.domain import Answer, Unavailable
from ops_console.settings import OpsConsoleSettings
from ops_console.upstream import LagMonitor, ServiceApis


class ConsoleHandlers:
    def __init__(self, apis: ServiceApis, lag: LagMonitor, settings: OpsConsoleSettings) -> None:
        self.apis, self.lag, self.settings = apis, lag, settings
        self._shared: dict[tuple[str | None, str], tuple[float, dict[str, Any]]] = {}

    async def overview(self, store: str | None, dimension: str) -> dict[str, Any]:
        key = (store, dimension)
        cached = self._shared.get(key)
        if cached is not None and time.monotonic() - cached[0] < self.settings.snapshot_seconds:
            return cached[1]
        answer = await self._gather(store, dimension)
        if len(self._shared) > 256:  # one entry per store × dimension asked lately
            self._shared.clear()
        self._shared[key] = (time.monotonic(), answer)
        return answer

    async def _gather(self, store: str | None, dimension: str) -> dict[str, Any]:
        s = self.settings
        get = self.apis.get
        requests = [
            get("pos-gateway", "/v1/stats/live", {"store_id": store, "hours": s.sales_window_hours, "top": 10}),
            get("segmenter", "/v1/segments"),
            get("segmenter", "/v1/segment-sizes", {"dimension": dimension, "days": s.segment_days}),
            get("segmenter", "/v1/rules", {"store": store, "min_support": s.rules_min_support,
                                          "min_confidence": s.rules_min_confidence, "limit": s.rules_top}),
            get("replenishment", "/v1/stock", {"below": "reorder_point"}),
            get("replenishment", "/v1/orders", {"status": "open", "store_id": store, "limit": 1000}),
            get("notifier", "/v1/campaigns"),
        ]
        if store:  # the filter offers every store, whichever is chosen now
            requests.append(get("pos-gateway", "/v1/stats/live", {"hours": s.sales_window_hours, "top": 1}))
        answers: list[Answer] = list(await asyncio.gather(*requests))
        live, segments, sizes, rules, stock, orders, campaigns = answers[:7]
        all_stores = answers[7] if store else live
        items_store = domain.items_store(stock, store)
        items, reports = await asyncio.gather(self._items(items_store), self._reports(campaigns))
        return {
            "store": store,
            "stores": domain.store_choices(all_stores, stock),
            "sales": domain.sales_panel(live),
            "segments": domain.segments_panel(segments, sizes, dimension),
            "rules": domain.rules_panel(rules, store),
            "stock": domain.stock_panel(stock, items, store),
            "orders": domain.orders_panel(orders, s.orders_shown),
            "campaigns": domain.campaigns_panel(campaigns, reports),
            "lag": domain.lag_panel(self.lag.groups, self.lag.measured, self.lag.measured_at, self.lag.prefix,
                                    self.lag.failures),
        }

    async def _items(self, store: str | None) -> Answer | None:
        if store is None:
            return None
        return await self.apis.get("replenishment", f"/v1/stock/{store}",
                                   {"below": "reorder_point", "limit": self.settings.stock_items_shown})

    async def _reports(self, campaigns: Answer) -> dict[str, Answer]:
        if isinstance(campaigns, Unavailable):
            return {}
        ids = [c["campaign_id"] for c in campaigns["campaigns"]]
        answers = await asyncio.gather(*(self.apis.get("notifier", f"/v1/campaigns/{i}/report") for i in ids))
        return dict(zip(ids, answers, strict=True))
