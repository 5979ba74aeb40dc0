"""Shared measurement helpers: interleaved wall-clock, the side-by-side wall table, report
files."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.cache import atomic_write_bytes

__all__ = [
    "OtherLoad",
    "interleaved_medians",
    "interleaved_times",
    "spread",
    "wall_table",
    "write_figures",
]


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@torch.inference_mode()
def interleaved_times(
    calls: dict[str, Callable[[], object]], repeats: int
) -> dict[str, list[float]]:
    """Seconds of every repeat of each call after one warm-up, timed round-robin so that drifts
    in machine load hit every variant alike (docs/design.md, "Accounting")."""
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


def _machine_busy_seconds() -> float | None:
    """CPU seconds every process of the machine has run, from Linux's /proc/stat (None
    elsewhere)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """Cores that *other* processes kept busy while the block ran: the machine's CPU time
    (/proc/stat) minus this process's own (all its threads), over the wall-clock time. A
    steady competing load slows every repeat alike, so the repeats' spread cannot see it;
    this can. ``cores`` is None where /proc/stat is missing (not Linux)."""

    def __enter__(self) -> OtherLoad:
        self.cores: float | None = None
        self._busy, self._own = _machine_busy_seconds(), _own_seconds()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        busy = _machine_busy_seconds()
        wall = time.perf_counter() - self._t0
        if busy is None or self._busy is None or wall <= 0:
            return
        other = (busy - self._busy) - (_own_seconds() - self._own)
        self.cores = max(0.0, other / wall)


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


def spread(times: list[float], trim: int = 0) -> float:
    """Relative spread of repeated timings, max / min - 1 (0 = perfectly steady), after
    dropping the ``trim`` fastest and ``trim`` slowest repeats (one stray repeat on a
    2-core machine should not condemn the other nine)."""
    kept = sorted(times)[trim : len(times) - trim] if len(times) > 2 * trim + 1 else times
    return max(kept) / min(kept) - 1


def write_figures(out: Path, markdown: str, report: dict) -> None:
    """``figures.md`` and ``figures.json`` under ``out``, each written atomically."""
    atomic_write_bytes(out / "figures.md", markdown.encode())
    atomic_write_bytes(out / "figures.json", json.dumps(report, indent=2).encode())


def wall_table(
    reference: Callable[[torch.Tensor, torch.Tensor], object],
    executors: dict[str, Any],
    x: torch.Tensor,
    t: torch.Tensor,
    repeats: int,
) -> list[dict[str, Any]]:
    """One batched denoiser call through each early-exit executor against ``reference`` (the
    plain forward) on the same ``(x, t)``: interleaved medians, so the wall ratio is measured
    side by side; each row also carries the executor's FLOP and layer ratio on that call.
    Runs under whatever autocast the caller has entered."""
    calls = {"plain": lambda: reference(x, t)}
    calls.update({k: (lambda e=e: e(x, t)) for k, e in executors.items()})
    med = interleaved_medians(calls, repeats)
    rows = []
    for k, ex in executors.items():
        ex.reset()
        with torch.inference_mode():
            ex(x, t)
        rows.append(
            {
                "executor": k,
                "flop_ratio": ex.flop_ratio,
                "layer_ratio": ex.layer_ratio,
                "wall_ratio": med[k] / med["plain"],
                "ms_per_call": 1e3 * med[k],
                "plain_ms_per_call": 1e3 * med["plain"],
                "images_per_s": x.shape[0] / med[k],
            }
        )
    return rows
