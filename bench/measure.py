"""Shared measurement helpers for the figure scripts: interleaved wall-clock, report files."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.cache import atomic_write_bytes

__all__ = ["interleaved_medians", "interleaved_times", "spread", "write_figures"]


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@torch.inference_mode()
def interleaved_times(
    calls: dict[str, Callable[[], object]], repeats: int
) -> dict[str, list[float]]:
    """Seconds of every repeat of each call after one warm-up, timed round-robin so that drifts
    in machine load hit every variant alike (DESIGN.md "Wall-clock")."""
    for fn in calls.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(repeats):
        for k, fn in calls.items():
            _sync()
            t0 = time.perf_counter()
            fn()
            _sync()
            times[k].append(time.perf_counter() - t0)
    return times


def interleaved_medians(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each call (see :func:`interleaved_times`)."""
    return {k: statistics.median(v) for k, v in interleaved_times(calls, repeats).items()}


def spread(times: list[float]) -> float:
    """Relative spread of repeated timings, max / min - 1 (0 = perfectly steady)."""
    return max(times) / min(times) - 1


def write_figures(out: Path, markdown: str, report: dict) -> None:
    """``figures.md`` and ``figures.json`` under ``out``, each written atomically."""
    atomic_write_bytes(out / "figures.md", markdown.encode())
    atomic_write_bytes(out / "figures.json", json.dumps(report, indent=2).encode())
