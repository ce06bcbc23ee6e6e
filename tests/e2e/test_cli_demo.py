"""The README's first command, end to end: `crm demo` starts everything, replays real sales,
prints its summary (offers by campaign and suppression reason, the ops console's
address among it), and leaves no process behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from crm_shared.embedded import port_is_free

pytestmark = pytest.mark.e2e


def test_crm_demo_replays_the_slice_and_stops_cleanly(tmp_path: Path) -> None:
    for port in (8001, 8006):
        if not port_is_free(port):
            pytest.fail(f"port {port} is taken: `crm demo` serves the gateway and the console there; stop what uses it")
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    run = subprocess.run([sys.executable, "-m", "crm_shared.cli", "demo", "--exit-after-replay",
                          "--state-dir", str(state)], capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    assert "Retail CRM is up." in out
    assert "pos-gateway  http://127.0.0.1:8001" in out
    assert "dev-pos-<store_id>" in out
    assert "accepted (202)                  1,955" in out
    assert "excluded: stock write-off rows           70" in out
    assert "or-united-kingdom" in out.split("Live figures")[1]
    segments = out.split("Segments as of")[1]
    assert "value_tier" in segments and "champions" in segments and "persona" in segments
    assert " → " in segments.split("Top basket rules")[1], "the December slice has rules at 2% support"
    assert "Catalog: " in out and "products with supplier terms" in out
    orders = out.split("Purchase orders raised from sell-through: ")[1].split("\n")[0]
    assert orders != "0", "a month of sales runs some stock below its reorder point"
    offers = out.split("\nOffers (")[1].split("\nLook at:")[0]
    head = re.match(r"(\d+) campaigns\): ([\d,]+) sent, ([\d,]+) withheld \(control group\), ([\d,]+) suppressed", offers)
    assert head, offers
    campaigns, sent, withheld, suppressed = (int(g.replace(",", "")) for g in head.groups())
    assert campaigns >= 4, "the notifier seeds a running campaign per default trigger"
    by_reason = {m[0]: int(m[1].replace(",", "")) for m in re.findall(r"suppressed: (\w+) +([\d,]+)", offers)}
    # 60% of members enrolled with consent: offers go out, and the other 40% are suppressed for consent
    assert sum(by_reason.values()) == suppressed > 0 and "no_consent" in by_reason, offers
    assert sent > 0 and withheld > 0, offers
    assert re.search(r"Enrolled [\d,]+ of the data's members at the loyalty desk, [\d,]+ of them", out)
    per_campaign = re.findall(r"([\d,]+) sent +([\d,]+) withheld", offers)
    assert len(per_campaign) == campaigns
    assert sum(int(a.replace(",", "")) for a, _ in per_campaign) == sent
    assert sum(int(b.replace(",", "")) for _, b in per_campaign) == withheld
    assert "Ops console: http://127.0.0.1:8006/?key=dev-ops" in out
    leftovers = [p.info for p in psutil.process_iter(["pid", "cmdline"])
                 if any(str(state) in part for part in (p.info["cmdline"] or []))]
    assert leftovers == []
