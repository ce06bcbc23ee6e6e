"""The overview handler over in-memory service answers: what it asks for a store, and a service that is down."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ops_console.domain import Answer, Unavailable
from ops_console.handlers import ConsoleHandlers
from ops_console.settings import OpsConsoleSettings
from ops_console.upstream import LagMonitor, consumer_groups

LIVE_ALL = {"as_of": "2010-12-09T12:50:00+00:00", "window_hours": 24, "top_skus": [], "stores": [
    {"store_id": "or-france", "sales": 2, "returns": 0, "revenue": "30.50", "hours": []},
    {"store_id": "or-eire", "sales": 1, "returns": 0, "revenue": "3", "hours": []}]}


class InMemoryApis:
    """Answers by (service, path); records every question."""

    def __init__(self, answers: Mapping[tuple[str, str], Answer]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, str, dict[str, Any]]] = []

    async def get(self, service: str, path: str, params: Mapping[str, Any] | None = None) -> Answer:
        self.asked.append((service, path, {k: v for k, v in (params or {}).items() if v is not None}))
        if (service, path) == ("pos-gateway", "/v1/stats/live") and params and params.get("store_id"):
            wanted = params["store_id"]
            return {**LIVE_ALL, "stores": [s for s in LIVE_ALL["stores"] if s["store_id"] == wanted]}
        return self.answers.get((service, path), Unavailable(service, f"{service} did not answer (ConnectError)"))


def handlers_over(apis: InMemoryApis) -> ConsoleHandlers:
    settings = OpsConsoleSettings(snapshot_seconds=0)
    lag = LagMonitor("127.0.0.1:1", "", consumer_groups(), 10)
    return ConsoleHandlers(apis, lag, settings)  # type: ignore[arg-type]


async def test_a_store_filter_is_asked_of_each_service_and_the_filter_still_offers_every_store() -> None:
    apis = InMemoryApis({
        ("pos-gateway", "/v1/stats/live"): LIVE_ALL,
        ("replenishment", "/v1/stock"): {"below": "reorder_point", "stores": [{"store_id": "or-eire", "skus": 3}]},
        ("replenishment", "/v1/stock/or-eire"): {"items": []},
        ("replenishment", "/v1/orders"): {"as_of": None, "orders": []},
        ("notifier", "/v1/campaigns"): {"campaigns": []},
    })
    view = await handlers_over(apis).overview("or-eire", "persona")
    asked = {(service, path): params for service, path, params in apis.asked}
    assert asked[("segmenter", "/v1/rules")]["store"] == "or-eire"
    assert asked[("replenishment", "/v1/orders")]["store_id"] == "or-eire"
    assert asked[("segmenter", "/v1/segment-sizes")]["dimension"] == "persona"
    assert ("replenishment", "/v1/stock/or-eire") in asked
    assert [s["store_id"] for s in view["sales"]["stores"]] == ["or-eire"]
    assert view["stores"] == ["or-eire", "or-france"]
    assert view["stock"]["stores"] == [{"store_id": "or-eire", "skus": 3}]


async def test_a_service_that_is_down_empties_its_panels_only() -> None:
    apis = InMemoryApis({("pos-gateway", "/v1/stats/live"): LIVE_ALL, ("notifier", "/v1/campaigns"): {"campaigns": []}})
    view = await handlers_over(apis).overview(None, "value_tier")
    assert view["sales"]["available"] and view["sales"]["totals"]["sales"] == 3
    for panel in ("segments", "rules"):
        assert view[panel] == {"available": False, "service": "segmenter",
                               "reason": "segmenter did not answer (ConnectError)"}
    assert view["stock"]["available"] is False and view["orders"]["available"] is False
    assert view["campaigns"]["available"] and view["campaigns"]["totals"]["sent"] == 0
    assert view["lag"] == {"available": False, "service": "broker", "reason": "first measurement not taken yet"}
