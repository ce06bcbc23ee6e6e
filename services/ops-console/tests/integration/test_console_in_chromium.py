"""The console in a real headless Chromium, over the five real services, after a replay of real sales:
the page loads, shows the replay's figures, and the store filter narrows them."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from crm_shared.datasets.online_retail import load_sales
from crm_shared.events import Sale
from crm_shared.kafka import consumer_lag, ensure_topics
from crm_shared.processes import ServiceProcess
from crm_shared.replay import publish_catalog, replay_http
from crm_shared.supplier_terms import products_from_sales
from crm_shared.testing import REPO_ROOT, StackEndpoints, start_service

pytestmark = pytest.mark.e2e

SLICE = REPO_ROOT / "deploy" / "demo-data" / "online_retail_2010-12.csv.gz"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
OPS = {"x-api-key": "dev-ops"}
WINDOW_HOURS = 168
UPSTREAM = {"pos_gateway": "POS_GATEWAY_URL", "member_profile": "MEMBER_PROFILE_URL", "segmenter": "SEGMENTER_URL",
            "replenishment": "REPLENISHMENT_URL", "notifier": "NOTIFIER_URL"}


def sales_in_window(sales: list[Sale], hours: int) -> Counter[str]:
    """Sales per store in the `hours` whole hours of event time ending with the latest event (the
    gateway's live window), counted from the file itself."""
    latest = max(s.occurred_at for s in sales).astimezone(UTC)
    first_hour = latest.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
    return Counter(s.store_id for s in sales if s.kind == "sale" and s.occurred_at.astimezone(UTC) >= first_hour)


def wait_until(what: str, check: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.5)


def caught_up(bootstrap: str, prefix: str, groups: dict[str, str]) -> Callable[[], bool]:
    def check() -> bool:
        return all(asyncio.run(consumer_lag(bootstrap, prefix + g, [prefix + t])).get(prefix + t) == 0
                   for g, t in groups.items())
    return check


def offers_sent(notifier: str, campaigns: list[dict[str, Any]]) -> list[int]:
    return [httpx.get(f"{notifier}/v1/campaigns/{c['campaign_id']}/report", headers=OPS).json()["sent"]
            for c in campaigns]


def test_console_shows_the_replay_and_the_store_filter_narrows_it(crm_stack: StackEndpoints, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make install` installs Debian's chromium when run as root "
                    "(or: apt-get install --no-install-recommends chromium)")
    from playwright.sync_api import expect, sync_playwright

    started = time.monotonic()
    sales = load_sales(SLICE)[0]
    prefix = f"oc{uuid.uuid4().hex[:6]}."
    bootstrap = crm_stack.kafka_bootstrap
    asyncio.run(ensure_topics(bootstrap, prefix=prefix, partitions=3))
    schema = uuid.uuid4().hex[:8]
    envs: dict[str, dict[str, str]] = {
        "pos_gateway": {"POS_GATEWAY_SCHEMA_NAME": f"gw_{schema}"},
        "member_profile": {"MEMBER_PROFILE_SCHEMA_NAME": f"mp_{schema}"},
        "segmenter": {"SEGMENTER_SCHEMA_NAME": f"sg_{schema}", "SEGMENTER_RULES_PUBLISH_SECONDS": "1"},
        "replenishment": {"REPLENISHMENT_SCHEMA_NAME": f"rp_{schema}"},
    }
    processes: list[ServiceProcess] = []

    def start(module: str, extra: dict[str, str]) -> ServiceProcess:
        process = start_service(module, crm_stack, tmp_path, prefix=prefix, extra_env=extra)
        processes.append(process)
        return process

    try:
        # One after the other from this thread: a service dies with the thread that started it.
        running = {module: start(module, extra) for module, extra in envs.items()}
        running["notifier"] = start("notifier", {"NOTIFIER_SCHEMA_NAME": f"nt_{schema}",
                                                 "NOTIFIER_MEMBER_PROFILE_URL": running["member_profile"].url})
        console = start("ops_console", {"OPS_CONSOLE_SALES_WINDOW_HOURS": str(WINDOW_HOURS),
                                        "OPS_CONSOLE_LAG_REFRESH_SECONDS": "2", "OPS_CONSOLE_POLL_SECONDS": "1",
                                        "OPS_CONSOLE_SNAPSHOT_SECONDS": "0",
                                        **{f"OPS_CONSOLE_{var}": running[m].url for m, var in UPSTREAM.items()}})
        asyncio.run(publish_catalog(products_from_sales(sales), bootstrap=bootstrap, topic_prefix=prefix, progress=False))
        wait_until("replenishment has the catalog",
                   caught_up(bootstrap, prefix, {"replenishment.catalog": "catalog.products.v1"}))
        outcome = asyncio.run(replay_http(sales, gateway_url=running["pos_gateway"].url, api_key=None, speed=None,
                                          progress=False))
        assert outcome.accepted == len(sales), outcome.as_table()
        wait_until("every service has the sales", caught_up(bootstrap, prefix, {
            "pos-gateway.live-stats": "pos.sales.v1", "member-profile.sales": "pos.sales.v1",
            "segmenter.sales": "pos.sales.v1", "replenishment.sales": "pos.sales.v1", "notifier.sales": "pos.sales.v1"}))
        time.sleep(1.5)  # member-profile's last profiles leave through its outbox
        wait_until("the segmenter has the profiles",
                   caught_up(bootstrap, prefix, {"segmenter.profiles": "member.profiles.v1"}))
        ready = time.monotonic()

        expected = sales_in_window(sales, WINDOW_HOURS)
        other_store = next(s for s, _ in expected.most_common() if s != "or-united-kingdom")
        rules = httpx.get(f"{running['segmenter'].url}/v1/rules", headers=OPS,
                          params={"min_support": 0.02, "min_confidence": 0.5, "limit": 10}).json()["rules"]
        assert rules, "the December slice has chain-wide rules at 2% support"
        campaigns = httpx.get(f"{running['notifier'].url}/v1/campaigns", headers=OPS).json()["campaigns"]

        # Without a key the console answers with its sign-in page, not the figures.
        assert httpx.get(console.url + "/").status_code == 401
        assert httpx.get(console.url + "/v1/overview").status_code == 401
        assert httpx.get(console.url + "/v1/overview", headers={"x-api-key": "dev-marketing"}).status_code == 403
        bad = httpx.get(console.url + "/v1/overview", headers=OPS, params={"store": "bad store\x01"})
        assert bad.status_code == 422 and "store" in bad.text

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1800})
                problems: list[str] = []
                page.on("pageerror", lambda error: problems.append(str(error)))
                page.goto(f"{console.url}/?key=dev-ops")
                assert page.url == console.url + "/", "the key leaves the address bar once it is in the cookie"
                expect(page).to_have_title("Retail CRM — ops console")
                kpi = page.get_by_test_id("kpi-sales")
                expect(kpi).to_have_text(f"{sum(expected.values()):,}", timeout=30_000)
                expect(page.locator("#stores-body tr")).to_have_count(len(expected))
                expect(page.locator("#stores-body")).to_contain_text("or-united-kingdom")
                first = rules[0]
                expect(page.locator("#rules-body tr").first).to_contain_text(
                    " + ".join(first["antecedents"]) + "→ " + first["consequent"])
                expect(page.locator("#segments-legend")).to_contain_text("champions")
                # The sizes of a day are recorded by the segmenter batch that reaches the day; on a loaded
                # machine it may still be at it when the page first loads (the page polls: it shows up).
                expect(page.locator("#segments-chart circle").first).to_be_visible(timeout=30_000)
                expect(page.locator("#campaigns-body tr")).to_have_count(len(campaigns))
                # Offers keep coming while welcome and segment triggers settle: the page tracks the notifier.
                wait_until("the page shows the notifier's offers sent", lambda: page.locator("#kpi-offers").inner_text()
                           == f"{sum(offers_sent(running['notifier'].url, campaigns)):,}", timeout=30)
                expect(page.locator("#lag-body")).to_contain_text("live-stats", timeout=30_000)
                expect(page.locator("#kpi-lag")).to_have_text("0", timeout=30_000)
                expect(page.locator("#sales-hours rect")).to_have_count(WINDOW_HOURS)
                page.screenshot(path=str(tmp_path / "console-chain.png"), full_page=True)

                page.get_by_test_id("store-filter").select_option(other_store)
                expect(page.locator("body")).to_have_attribute("data-store", other_store, timeout=15_000)
                expect(kpi).to_have_text(f"{expected[other_store]:,}")
                expect(page.locator("#stores-body tr")).to_have_count(1)
                expect(page.locator("#stores-body")).to_contain_text(other_store)
                expect(page.locator("#stores-body")).not_to_contain_text("or-united-kingdom")
                expect(page.get_by_test_id("status")).to_contain_text(f"store {other_store}")
                page.screenshot(path=str(tmp_path / "console-store.png"), full_page=True)
                assert problems == [], problems
            finally:
                browser.close()
        print(f"\nstack + replay {ready - started:.1f} s, browser checks {time.monotonic() - ready:.1f} s; "
              f"screenshots in {tmp_path}")
    finally:
        for process in reversed(processes):
            process.stop()
