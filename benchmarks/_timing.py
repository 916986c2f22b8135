"""Wall-clock timing shared by the benchmarks (run them as scripts: ``python benchmarks/bench_x.py``)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def seconds(fn: Callable[[], object]) -> float:
    """How long one call of ``fn`` takes, in seconds."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median(fn: Callable[[], object], repeats: int, *, warm_up: bool = False) -> float:
    """The median of ``repeats`` timed calls, after one untimed call when ``warm_up``."""
    if warm_up:
        fn()
    return statistics.median(seconds(fn) for _ in range(repeats))
