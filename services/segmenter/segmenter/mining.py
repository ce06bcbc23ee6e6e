"""Association rules are mined in a process of the segmenter's own, not in the service's.

Why (measured with `bench/e2e.py`, steady traffic of 200 sales/s after the whole year): a look at a
store whose window holds the same long wholesale order many times over allocates up to
`MAX_ITEMSETS` (300,000) itemsets, ~100-200 MB, for a second or so. Mined in a thread of the service,
the sales and profiles decoded meanwhile, and the baskets that stay in the windows, landed in the
memory those itemsets had taken; freed, it could not all go back. The service grew in steps at every
look (+4-5 KB per sale, 332 -> 494 MB over 30,000 sales; flat between looks), and the mining held the
interpreter's lock against the consumers while it ran. The mining process holds nothing between two
looks, so what a look allocates is all freed again, and the service's event loop keeps running.

The worker is spawned (never forked from a process with threads and open sockets) on first use and
replaced after `tasks_per_process` looks, or at once if it died. It dies with the service (a
segmenter killed outright, SIGKILL or out of memory, leaves no orphan worker behind) and runs at a
lower priority than the consumers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial

from segmenter.baskets import ARULES_MAX_RULE_ITEMS, MAX_ITEMSETS, AssociationRule, mine_rules

log = logging.getLogger(__name__)


WORKER_NICENESS = 10  # mining is background work: the consumers (this service's and others') go first


def prepare_worker(parent_pid: int) -> None:
    """The worker's initializer. The kernel kills it when the service's process dies (Linux's
    parent-death signal); if the service died before this ran, it exits at once. It runs at a lower
    priority, so that on a busy machine a look takes longer rather than the sales waiting."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os._exit(0)
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICENESS)


class RuleMiner:
    """Runs `mine_rules` in one worker process (or, `in_process=True`, in a thread: for callers that
    mine small windows and want no process, such as unit tests)."""

    def __init__(self, *, in_process: bool = False, tasks_per_process: int = 200) -> None:
        self.in_process = in_process
        self.tasks_per_process = tasks_per_process
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                             max_tasks_per_child=self.tasks_per_process,
                                             initializer=prepare_worker, initargs=(os.getpid(),))
        return self._pool

    async def rules(self, baskets: Sequence[tuple[str, ...]], min_support: float, min_confidence: float,
                    min_lift: float = 0.0, antecedent: frozenset[str] | None = None, limit: int | None = None,
                    max_items: int | None = None, *, max_rule_items: int = ARULES_MAX_RULE_ITEMS,
                    max_itemsets: int = MAX_ITEMSETS) -> list[AssociationRule]:
        """The rules of these baskets (`BasketRules.item_lists()`); raises `TooManyItemsets` as `rules` does."""
        call = partial(mine_rules, baskets, min_support, min_confidence, min_lift, antecedent, limit, max_items,
                       max_rule_items=max_rule_items, max_itemsets=max_itemsets)
        if self.in_process:
            return await asyncio.to_thread(call)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor(), call)
        except BrokenProcessPool:
            # The worker died (killed, out of memory): a new one takes this look again, once.
            log.warning("rule-mining process died; starting another")
            self.close()
            return await loop.run_in_executor(self._executor(), call)

    @property
    def worker_pid(self) -> int | None:
        """The mining process's id, once it runs."""
        processes = getattr(self._pool, "_processes", None) or {}
        return next(iter(processes), None)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
