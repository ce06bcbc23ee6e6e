"""Run `python -m pos_gateway` with its garbage-collector pauses measured (bench experiment only).

    PYTHONPATH=bench python -m gc_probe            # measure only
    BENCH_GC_FREEZE=1 PYTHONPATH=bench python -m gc_probe   # gc.freeze() after the imports, as a fix would
    BENCH_GC_THRESHOLD=50000,20,100 ...                     # gc.set_threshold(...) as well

Every 5 s it logs, per generation, how many collections ran, their total and longest pause.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
from collections import defaultdict

pauses: dict[int, list[float]] = defaultdict(list)
_started: list[float] = [0.0]


def _on_gc(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
    else:
        pauses[info["generation"]].append(time.perf_counter() - _started[0])


def _report() -> None:
    while True:
        time.sleep(5)
        parts = []
        for generation in sorted(pauses):
            taken = list(pauses[generation])
            if taken:
                parts.append(f"gen{generation}: {len(taken)} runs, total {sum(taken) * 1000:.0f} ms, "
                             f"max {max(taken) * 1000:.1f} ms")
        print(f"[gc_probe] counts {gc.get_count()}, frozen {gc.get_freeze_count():,}; " + "; ".join(parts),
              file=sys.stderr, flush=True)


def main() -> int:
    # The heavy imports first, so a freeze covers what a started gateway keeps for its whole life.
    import pos_gateway.api
    import pos_gateway.bootstrap  # noqa: F401
    from pos_gateway.__main__ import main as gateway_main

    if os.environ.get("BENCH_GC_FREEZE") == "1":
        gc.collect()
        gc.freeze()
        print(f"[gc_probe] frozen {gc.get_freeze_count():,} objects", file=sys.stderr, flush=True)
    threshold = os.environ.get("BENCH_GC_THRESHOLD")  # e.g. "50000,20,100"
    if threshold:
        gc.set_threshold(*(int(part) for part in threshold.split(",")))
        print(f"[gc_probe] thresholds {gc.get_threshold()}", file=sys.stderr, flush=True)
    gc.callbacks.append(_on_gc)
    threading.Thread(target=_report, daemon=True).start()
    return gateway_main([])


if __name__ == "__main__":
    sys.exit(main())
