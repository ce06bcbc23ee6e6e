"""The mining process: the same rules as mining in the service's own process, refusals carried
across, and a worker that died replaced (a real spawned process; no broker or database)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest
from segmenter.baskets import BasketRules, TooManyItemsets
from segmenter.mining import WORKER_NICENESS, RuleMiner

T0 = datetime(2011, 12, 1, tzinfo=UTC)


def window() -> BasketRules:
    rules = BasketRules()
    for i in range(300):
        basket = ["bread", "milk"] if i % 2 else ["bread", "butter", f"extra{i % 7}"]
        if i % 3 == 0:
            basket.append("jam")
        rules.add(f"b{i}", basket, T0)
    return rules


def test_rules_mined_in_the_worker_equal_the_windows_own_and_refusals_cross_back() -> None:
    rules = window()

    async def scenario() -> tuple[list[object], list[object], TooManyItemsets, int | None, int | None]:
        miner = RuleMiner()
        try:
            mined = await miner.rules(rules.item_lists(), 0.05, 0.3, 0.0, None, 10, 3)
            all_rules = await miner.rules(rules.item_lists(), 0.05, 0.3)
            wholesale = BasketRules(max_itemsets=1_000)
            for i in range(3):
                wholesale.add(f"w{i}", [f"sku{j}" for j in range(30)], T0)
            with pytest.raises(TooManyItemsets) as refused:
                await miner.rules(wholesale.item_lists(), 0.5, 0.5, max_itemsets=wholesale.max_itemsets)
            worker = miner.worker_pid
            return mined, all_rules, refused.value, worker, psutil.Process(worker).nice() if worker else None
        finally:
            miner.close()

    mined, all_rules, refused, worker, niceness = asyncio.run(scenario())
    assert mined == rules.rules(0.05, 0.3, limit=10, max_items=3) != []
    assert all_rules == rules.rules(0.05, 0.3)
    assert (refused.limit, refused.min_count, refused.baskets) == (1_000, 2, 3)
    assert worker is not None and worker != os.getpid()
    assert niceness == os.nice(0) + WORKER_NICENESS  # behind the consumers for the CPU


def test_a_worker_that_died_is_replaced_and_the_look_is_answered() -> None:
    rules = window()

    async def scenario() -> tuple[list[object], int | None, int | None]:
        miner = RuleMiner()
        try:
            await miner.rules(rules.item_lists(), 0.05, 0.3)
            first = miner.worker_pid
            assert first is not None
            os.kill(first, signal.SIGKILL)
            await asyncio.sleep(0.5)
            again = await miner.rules(rules.item_lists(), 0.05, 0.3, 0.0, None, 5)
            return again, first, miner.worker_pid
        finally:
            miner.close()

    again, first, second = asyncio.run(scenario())
    assert again == rules.rules(0.05, 0.3, limit=5) != []
    assert second is not None and second != first


ORPHAN_CHECK = """
import asyncio
from datetime import UTC, datetime
from segmenter.baskets import BasketRules
from segmenter.mining import RuleMiner

async def main() -> None:
    rules = BasketRules()
    for i in range(50):
        rules.add(str(i), ["a", "b"], datetime(2011, 12, 1, tzinfo=UTC))
    miner = RuleMiner()
    await miner.rules(rules.item_lists(), 0.1, 0.1)
    print(miner.worker_pid, flush=True)
    await asyncio.sleep(120)

if __name__ == "__main__":  # the spawned worker imports this file again
    asyncio.run(main())
"""


def test_a_service_killed_outright_leaves_no_mining_worker_behind(tmp_path: Path) -> None:
    script = tmp_path / "service.py"
    script.write_text(ORPHAN_CHECK)
    service = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert service.stdout is not None
        line = service.stdout.readline()
        assert line.strip().isdigit(), f"the service printed no worker pid: {line!r}"
        worker = int(line)
        assert psutil.pid_exists(worker)
    finally:
        service.kill()  # SIGKILL: no shutdown hook runs
        service.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and psutil.pid_exists(worker) and psutil.Process(worker).status() != "zombie":
        time.sleep(0.1)
    assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == "zombie", "the worker outlived the service"


def test_the_rules_api_answers_a_repeated_question_of_the_same_window_without_mining_again() -> None:
    from segmenter.handlers import SegmentHandlers
    from segmenter.settings import SegmenterSettings

    class CountingMiner(RuleMiner):
        looks = 0

        async def rules(self, *args: object, **kwargs: object) -> list[object]:  # type: ignore[override]
            CountingMiner.looks += 1
            return await super().rules(*args, **kwargs)  # type: ignore[arg-type]

    handlers = SegmentHandlers(None, SegmenterSettings(), topic_prefix="",  # type: ignore[arg-type]  # no I/O here
                               miner=CountingMiner(in_process=True))
    handlers._add_baskets([(f"b{i}", "s1", T0, ["bread", "milk"] if i % 2 else ["bread", "jam"]) for i in range(40)])

    async def ask(min_support: float = 0.1) -> tuple[list[object], int]:
        return await handlers.rules(scope=None, min_support=min_support, min_confidence=0.3, min_lift=0.0,
                                    antecedent=None, limit=10)

    first = asyncio.run(ask())
    assert first[0] and first[1] == 40 and CountingMiner.looks == 1
    assert asyncio.run(ask()) == first and CountingMiner.looks == 1  # answered, not mined
    asyncio.run(ask(0.2))
    assert CountingMiner.looks == 2  # another question
    handlers._add_baskets([("b-new", "s1", T0, ["milk", "jam"])])
    assert asyncio.run(ask())[1] == 41 and CountingMiner.looks == 3  # another window


def test_a_store_window_that_emptied_and_filled_again_is_not_answered_from_the_old_one() -> None:
    """A store that stopped selling leaves the window; when it sells again its window counts versions
    from 0 again, so an answer kept for the old window at the same version must not be served."""
    from datetime import timedelta

    from segmenter.handlers import SegmentHandlers
    from segmenter.settings import SegmenterSettings

    handlers = SegmentHandlers(None, SegmenterSettings(), topic_prefix="",  # type: ignore[arg-type]  # no I/O here
                               miner=RuleMiner(in_process=True))

    async def ask() -> tuple[list[object], int]:
        return await handlers.rules(scope="s1", min_support=0.1, min_confidence=0.3, min_lift=0.0,
                                    antecedent=None, limit=10)

    handlers._add_baskets([(f"old{i}", "s1", T0, ["bread", "milk"]) for i in range(40)])
    before = asyncio.run(ask())
    assert {r.consequent for r in before[0]} == {"bread", "milk"}  # type: ignore[attr-defined]
    later = T0 + handlers.window + timedelta(days=1)
    handlers._add_baskets([("chain", "s2", later, ["tea"])])  # the chain's clock moves on: s1's window empties
    assert handlers.rules_for("s1") is None
    handlers._add_baskets([(f"new{i}", "s1", later, ["jam", "tea"]) for i in range(40)])
    after = asyncio.run(ask())
    assert {r.consequent for r in after[0]} == {"jam", "tea"}  # type: ignore[attr-defined]
