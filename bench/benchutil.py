"""Shared helpers of the bench scripts: the machine header, medians of timed runs, percentiles.

Not a bench itself (``make bench`` runs only ``bench/bench_*.py``). Every bench prints
:func:`header` first, so a table always says when, where and under what load it was measured, and
:func:`footer` last, with the load average again: the machine is shared and the figures move with it.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import TypeVar

T = TypeVar("T")


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, e.g. ``"1.02 0.87 0.90"``."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def header(title: str, command: str) -> str:
    """Lines naming the bench, the UTC date, the core count, torch's threads and the load average."""
    import torch

    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"# {title}\n"
            f"date {now}; {os.cpu_count()} CPU cores; torch {torch.__version__} with {torch.get_num_threads()} "
            f"thread(s); load average {load_average()} (1/5/15 min) at start\n"
            f"command: {command}")


def footer() -> str:
    return f"load average {load_average()} (1/5/15 min) at end"


def timed(run: Callable[[], T]) -> tuple[float, T]:
    """Wall seconds of one call of ``run`` and its result."""
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def median_seconds(run: Callable[[], T], repeats: int, warmup: int = 1) -> tuple[float, list[float], T]:
    """(median wall seconds, every timing, last result) of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    times, result = [], None
    for _ in range(repeats):
        seconds, result = timed(run)
        times.append(seconds)
    return statistics.median(times), times, result


def median_wall_cpu(run: Callable[[], T], repeats: int, warmup: int = 1) -> tuple[float, float, list[float], T]:
    """(median wall s, median CPU s of this process, every wall time, last result) of ``repeats`` calls.

    CPU time counts only this process's own work, so it moves less than wall time when other jobs share
    the cores; a wall time far above the CPU time means the run waited for a core.
    """
    for _ in range(warmup):
        run()
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        cpu0 = time.process_time()
        seconds, result = timed(run)
        cpus.append(time.process_time() - cpu0)
        walls.append(seconds)
    return statistics.median(walls), statistics.median(cpus), walls, result


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by the nearest-rank method: a value that was actually measured."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n q / 100), at least the first value
    return ordered[int(rank) - 1]
