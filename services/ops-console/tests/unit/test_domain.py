"""The console's panels from the services' answers: pure, milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime

from ops_console import domain
from ops_console.domain import ConsumerGroup, Unavailable

LIVE = {
    "as_of": "2010-12-09T12:50:00+00:00", "window_hours": 3,
    "stores": [
        {"store_id": "or-france", "sales": 2, "returns": 0, "revenue": "30.50",
         "hours": [{"hour": "2010-12-09T12:00:00+00:00", "sales": 2, "returns": 0, "revenue": "30.50"}]},
        {"store_id": "or-united-kingdom", "sales": 5, "returns": 1, "revenue": "120.0001",
         "hours": [{"hour": "2010-12-09T10:00:00+00:00", "sales": 3, "returns": 1, "revenue": "100.0001"},
                   {"hour": "2010-12-09T12:00:00Z", "sales": 2, "returns": 0, "revenue": "20"}]},
    ],
    "top_skus": [{"sku": "85123A", "quantity": 12}],
}


def test_sales_panel_adds_stores_per_hour_and_fills_quiet_hours_with_zero() -> None:
    panel = domain.sales_panel(LIVE)
    assert panel["totals"] == {"sales": 7, "returns": 1, "revenue": "150.5001"}
    assert [s["store_id"] for s in panel["stores"]] == ["or-united-kingdom", "or-france"]  # by revenue
    assert [(h["hour"][11:13], h["sales"], h["revenue"]) for h in panel["hours"]] == [
        ("10", 3, "100.0001"), ("11", 0, "0"), ("12", 4, "50.50")]


def test_hour_buckets_end_with_the_hour_of_the_latest_event() -> None:
    buckets = domain.hour_buckets(datetime(2010, 12, 9, 0, 5, tzinfo=UTC), 2)
    assert buckets == [datetime(2010, 12, 8, 23, tzinfo=UTC), datetime(2010, 12, 9, 0, tzinfo=UTC)]


def test_a_service_that_did_not_answer_is_a_panel_that_says_why() -> None:
    panel = domain.sales_panel(Unavailable("pos-gateway", "pos-gateway did not answer (ConnectError)"))
    assert panel == {"available": False, "service": "pos-gateway", "reason": "pos-gateway did not answer (ConnectError)"}


def test_segment_sizes_over_time_keep_a_zero_where_a_segment_was_empty() -> None:
    current = {"as_of": "2010-12-23T19:00:00+00:00", "dimensions": {
        "value_tier": [{"id": "champions", "size": 40}, {"id": "lost", "size": 2}], "persona": []}}
    sizes = {"days": [{"day": "2010-12-21", "sizes": {"champions": 30}},
                      {"day": "2010-12-22", "sizes": {"champions": 35, "new": 4}}]}
    panel = domain.segments_panel(current, sizes, "value_tier")
    assert panel["members"] == 42 and panel["days"] == ["2010-12-21", "2010-12-22"]
    series = {s["segment"]: [p["size"] for p in s["points"]] for s in panel["over_time"]}
    assert series == {"champions": [30, 35], "lost": [0, 0], "new": [0, 4]}
    without_trend = domain.segments_panel(current, Unavailable("segmenter", "segmenter answered 404: x"), "value_tier")
    assert without_trend["available"] and "404" in without_trend["trend_note"]


def test_campaign_totals_add_sent_withheld_and_each_suppression_reason() -> None:
    campaigns = {"campaigns": [
        {"campaign_id": "auto-welcome", "status": "running", "definition": {"name": "Welcome", "trigger": "welcome"}},
        {"campaign_id": "auto-cross_sell", "status": "running", "definition": {"name": "Cross-sell", "trigger": "cross_sell"}},
        {"campaign_id": "broken", "status": "draft", "definition": {}}]}
    reports = {
        "auto-welcome": {"sent": 10, "withheld": 1, "suppressed": {"no_consent": 7, "quiet_hours": 2}, "uplift": 0.1,
                         "uplift_ci95": [-0.05, 0.25]},
        "auto-cross_sell": {"sent": 5, "waiting_for_quiet_hours_end": 2, "withheld": 2,
                            "suppressed": {"no_consent": 3, "daily_cap": 1}},
        "broken": Unavailable("notifier", "notifier answered 500: boom"),
    }
    panel = domain.campaigns_panel(campaigns, reports)
    assert panel["totals"] == {"sent": 15, "waiting_for_quiet_hours_end": 2, "withheld": 3, "suppressed_total": 13,
                               "suppressed": {"no_consent": 10, "quiet_hours": 2, "daily_cap": 1}}
    assert list(panel["totals"]["suppressed"]) == ["no_consent", "quiet_hours", "daily_cap"]  # most first
    rows = {r["campaign_id"]: r for r in panel["campaigns"]}
    assert rows["auto-welcome"]["report"]["uplift_ci95"] == [-0.05, 0.25]
    assert rows["auto-cross_sell"]["report"]["waiting_for_quiet_hours_end"] == 2
    assert rows["auto-welcome"]["report"]["waiting_for_quiet_hours_end"] is None  # an older notifier's report
    assert rows["broken"]["report"] is None and "500" in rows["broken"]["reason"]


def test_lag_is_summed_per_service_and_an_unmeasured_group_says_why() -> None:
    groups = [ConsumerGroup("segmenter", "segmenter.sales", ("pos.sales.v1",)),
              ConsumerGroup("segmenter", "segmenter.profiles", ("member.profiles.v1",)),
              ConsumerGroup("notifier", "notifier.sales", ("pos.sales.v1",))]
    measured = {"t1.segmenter.sales": {"t1.pos.sales.v1": 7}, "t1.notifier.sales": {"t1.pos.sales.v1": 0}}
    panel = domain.lag_panel(groups, measured, "2026-01-01T00:00:00+00:00", "t1.",
                             {"t1.segmenter.profiles": "not measured: TimeoutError"})
    assert panel["total"] == 7
    services = {s["service"]: s for s in panel["services"]}
    assert services["segmenter"]["lag"] == 7 and services["notifier"]["lag"] == 0
    assert services["segmenter"]["groups"][0]["topics"] == {"pos.sales.v1": 7}
    assert services["segmenter"]["groups"][1] == {"group": "segmenter.profiles", "lag": None, "topics": {},
                                                  "reason": "not measured: TimeoutError"}
    assert domain.lag_panel(groups, None, None, "t1.")["available"] is False


def test_stock_lists_the_filtered_store_else_the_one_with_most_skus_below() -> None:
    per_store = {"stores": [{"store_id": "a", "skus": 2}, {"store_id": "b", "skus": 9}, {"store_id": "c", "skus": 9}]}
    assert domain.items_store(per_store, None) == "b"
    assert domain.items_store(per_store, "a") == "a"
    assert domain.items_store({"stores": []}, None) is None
    panel = domain.stock_panel(per_store, {"items": []}, "a")
    assert panel["stores"] == [{"store_id": "a", "skus": 2}] and panel["skus_below"] == 2


def test_open_orders_leave_out_received_and_closed_ones() -> None:
    orders = {"as_of": "2010-12-20T00:00:00+00:00", "orders": [
        {"po_id": "po-1", "status": "raised", "overdue": True, "lines": [{}, {}], "store_id": "a"},
        {"po_id": "po-2", "status": "received", "overdue": False, "lines": [], "store_id": "a"},
        {"po_id": "po-3", "status": "shipped", "overdue": False, "lines": [{}], "store_id": "b"}]}
    panel = domain.orders_panel(orders, shown=1)
    assert (panel["open"], panel["overdue"]) == (2, 1)
    assert [(o["po_id"], o["lines"]) for o in panel["orders"]] == [("po-1", 2)]


def test_the_filter_offers_every_store_any_service_knows() -> None:
    stock = {"stores": [{"store_id": "or-eire", "skus": 1}]}
    assert domain.store_choices(LIVE, stock, Unavailable("x", "y"), None) == ["or-eire", "or-france", "or-united-kingdom"]
