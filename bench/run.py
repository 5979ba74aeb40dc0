"""Run one cell and measure it: the record every part of the harness reads.

:func:`run_cell` builds the cell's pipeline (:func:`bench.pipeline.build_pipeline`), samples,
and measures the record's fields (DESIGN "Measurements"); :func:`run_and_store` is the unit of
work of every executor (:mod:`bench.executors`): claim the cell, run it, write its record or
its failure.

A record holds FID/KID (with the extractor's name), FLOP ratios (per call vs the unpruned
full-depth model, and in total vs DDPM with all T steps), layer ratio, NFE, seconds per image
(median over sampling batches after the warm-up one), a side-by-side wall ratio per call,
params/MACs, an exit-block x timestep histogram and the environment. Samples with NaN/Inf are
recorded with ``nonfinite = true`` and no FID.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import statistics
import subprocess
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.cache import ArtifactCache
from bench.cell import Cell, cell_model_key
from bench.data import DataSource
from bench.devices import AUTOCAST, autocast
from bench.measure import OtherLoad, interleaved_times, spread
from bench.paired import PAIRED_FIELDS, paired_fidelity
from bench.pipeline import TIMING_BATCH, Pipeline, build_pipeline
from bench.sampling import save_grid
from bench.store import (
    claim,
    os_error_line,
    read_record,
    sample_path,
    write_failure,
    write_record,
)
from blockloop.executor import EarlyExitDenoiser

__all__ = [
    "capture_for",
    "run_and_store",
    "run_cell",
    "side_by_side_wall_ratio",
    "threads_per_worker",
]

log = logging.getLogger(__name__)


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _wall_clock(
    run_batch: Callable[[list[float]], Any], batches: list[float], sizes: list[int]
) -> tuple[float, list[float]]:
    """Median seconds per image over the timed batches after the first (warm-up); one extra
    batch is timed when the run had fewer than two full batches."""
    per_image = [s / m for s, m in zip(batches[1:], sizes[1:], strict=True) if m == sizes[0]]
    if not per_image:
        extra: list[float] = []
        run_batch(extra)
        per_image = [extra[0] / sizes[0]]
    return statistics.median(per_image), per_image


EXIT_T_BINS = 20  # timestep bins of the exit-block histogram in each record


def _exit_histogram(ex: EarlyExitDenoiser, T: int) -> dict[str, Any]:
    """Counts of (timestep bin, exit block) over every (sample, call) of the run."""
    arr = ex.trace.arrays()
    ran = arr["exit_block"] >= 0  # rows a cache served wholly (exit block -1) ran no block
    arr = {k: v[ran] for k, v in arr.items()}
    t_bin = np.minimum((arr["t"] / T * EXIT_T_BINS).astype(int), EXIT_T_BINS - 1)
    counts = np.zeros((EXIT_T_BINS, ex.model.depth), dtype=np.int64)
    np.add.at(counts, (t_bin, arr["exit_block"].astype(int)), 1)
    return {"t_edges": np.linspace(0, T, EXIT_T_BINS + 1).tolist(), "counts": counts.tolist()}


WALL_CALLS = 6  # denoiser calls of the first batch replayed for the side-by-side wall ratio
WALL_REPEATS = 5


class _Capture:
    """Passes calls through to ``inner`` and keeps a copy of every ``every``-th input among the
    first ``first`` calls; ``first=None`` keeps every call of the first sampling run (until the
    time stops decreasing: the next batch)."""

    def __init__(self, inner: Any, first: int | None, every: int = 1) -> None:
        self.inner, self.first, self.every = inner, first, every
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        self.n = 0
        self._last_t = float("inf")
        self._open = True

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None):
        if self.first is None:
            t_now = float(t.max())
            self._open = self._open and t_now < self._last_t
            self._last_t = t_now
            keep = self._open
        else:
            keep = self.n < self.first and self.n % self.every == 0
        if keep:
            self.calls.append((x.clone(), t.clone(), None if cond is None else cond.clone()))
        self.n += 1
        return self.inner(x, t, cond)


# A side-by-side timing whose plain-model reference or cell varies by more than this between
# repeats (max / min - 1 of the repeats without the fastest and the slowest) is re-measured
# once with twice the repeats, then flagged `timing_unstable`.
UNSTABLE_SPREAD = 0.25
# ... or while other processes kept more than this many cores busy (a steady competing load
# slows every repeat alike, so the spread alone misses it).
BUSY_CORES = 0.3


def side_by_side_wall_ratio(ex, reference, calls, amp, device) -> dict[str, Any]:
    """Wall-clock of the executor over the captured calls / the unpruned model's plain forward
    over the same calls, as the ratio of interleaved medians (DESIGN "Wall-clock"), with the
    per-repeat ratios and whether either timing was unstable (a busy machine). With a
    step-level cache the calls are a whole sampling run, replayed in order from a reset cache
    (its reuse depends on the sequence)."""
    if not calls:
        return {
            "wall_ratio_per_call": None,
            "wall_ratio_repeats": [],
            "timing_unstable": None,
            "timing_other_cores": None,
        }

    def run(fn):
        def replay():
            if getattr(fn, "cache", None) is not None:
                fn.cache.reset()
            return [fn(x, t, c) for x, t, c in calls]

        return replay

    for repeats in (WALL_REPEATS, 2 * WALL_REPEATS):
        with autocast(device, amp), OtherLoad() as load:
            times = interleaved_times({"plain": run(reference), "cell": run(ex)}, repeats)
        worst = max(spread(times[k], trim=1) for k in ("plain", "cell"))
        busy = load.cores is not None and load.cores > BUSY_CORES
        unstable = worst > UNSTABLE_SPREAD or busy
        if not unstable:
            break
        log.warning(
            "timings varied by %.0f%% between repeats, other processes used %s cores; re-measuring",
            100 * worst,
            "?" if load.cores is None else f"{load.cores:.2f}",
        )
    ratios = [c / p for c, p in zip(times["cell"], times["plain"], strict=True)]
    return {
        "wall_ratio_per_call": statistics.median(times["cell"]) / statistics.median(times["plain"]),
        "wall_ratio_repeats": ratios,
        "timing_unstable": unstable,
        "timing_other_cores": load.cores,  # cores other processes used while timing
    }


def capture_for(ex: EarlyExitDenoiser, steps: int) -> _Capture:
    """What the side-by-side timing replays: every few of the first ``steps`` calls, or with a
    step-level cache every call of the first sampling run (its reuse depends on the sequence)."""
    if ex.cache is None:
        return _Capture(ex, first=steps, every=max(1, steps // WALL_CALLS))
    return _Capture(ex, first=None)


def _cache_stats(ex: EarlyExitDenoiser) -> dict[str, Any]:
    """The cache's share of block FLOPs reused and the most memory it held (MiB)."""
    if ex.cache is None:
        return {"cache_reuse_ratio": None, "cache_peak_mb": None}
    return {
        "cache_reuse_ratio": ex.cache.reuse_ratio,
        "cache_peak_mb": ex.cache.peak_bytes / 2**20,
    }


def _environment(device: torch.device) -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "host": platform.node(),
        "git_commit": _git_commit(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _timing(pipe: Pipeline, capture: _Capture, batch_seconds: list[float]) -> dict[str, Any]:
    """Seconds per image of the sampling batches, and the side-by-side wall ratio per call."""
    cell = pipe.cell
    sizes = [min(TIMING_BATCH, cell.samples - s) for s in range(0, cell.samples, TIMING_BATCH)]
    seconds, per_image = _wall_clock(
        lambda t: pipe.sample(sizes[0], cell.seed + 1, denoiser=pipe.denoiser(capture), timings=t),
        batch_seconds,
        sizes,
    )
    amp = AUTOCAST[cell.autocast]
    wall = side_by_side_wall_ratio(pipe.executor, pipe.base.model, capture.calls, amp, pipe.device)
    capture.calls.clear()
    return {
        "seconds_per_image": seconds,
        "seconds_per_image_repeats": per_image,
        # Side by side: this cell's denoiser vs the unpruned model's plain forward on the same
        # captured inputs of its first batch, interleaved medians (comparable across cells),
        # with every repeat's ratio and the busy-machine flag.
        **wall,
        "timing_batch": sizes[0],
    }


def run_cell(
    cell: Cell,
    cache: ArtifactCache,
    device: torch.device | None = None,
    sample_grid: Path | None = None,
    data: DataSource | None = None,
    phase: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run one cell end to end and return its record (``device`` overrides ``cell.device``).
    ``sample_grid``: write the first 100 samples there as a PNG grid. ``phase`` is told each
    phase of :data:`bench.progress.PHASES` as it begins."""
    phase = phase or (lambda name: None)
    pipe = build_pipeline(cell, cache, device, data=data, phase=phase)
    ex = pipe.executor
    capture = capture_for(ex, cell.steps)
    batch_seconds: list[float] = []
    phase("sample")
    imgs, nfe = pipe.sample(
        cell.samples, cell.seed, denoiser=pipe.denoiser(capture), timings=batch_seconds
    )
    executed_flops, rows, layer_ratio = ex.executed_flops, ex.rows, ex.layer_ratio
    cache_stats = _cache_stats(ex)
    exit_hist = _exit_histogram(ex, pipe.schedule.T)
    if sample_grid is not None:
        save_grid(imgs[:100], sample_grid, nrow=10)
    phase("time")
    timing = _timing(pipe, capture, batch_seconds)
    metrics = _score(pipe, imgs, cache, phase)
    unpruned = pipe.unpruned_flops
    reference = unpruned * pipe.schedule.T * cell.samples * pipe.rows_per_sample
    return {
        **_identity(pipe),
        **cache_stats,
        **metrics,
        "nfe": nfe,
        "flop_ratio_per_call": executed_flops / (max(rows, 1) * unpruned),
        "flop_ratio_vs_reference": executed_flops / reference,
        "layer_ratio": layer_ratio,
        **timing,
        "params": sum(p.numel() for p in pipe.model.parameters()),
        "params_unpruned": sum(p.numel() for p in pipe.base.model.parameters()),
        "macs_per_call": ex.costs.full / 2,  # per sample, full depth (FLOPs = 2 x MACs)
        "exit_histogram": exit_hist,
        **_environment(pipe.device),
    }


def _identity(pipe) -> dict[str, Any]:
    """The record's head: the cell's fields, its key, the model that ran, the knobs used."""
    cell = pipe.cell
    return {
        **dataclasses.asdict(cell),
        "key": cell.key,
        "model_key": cell_model_key(cell),  # which checkpoint / pruned model made the record
        "label": cell.label(),
        "knob_used": pipe.knob,
        "cache_knob_used": pipe.cache_knob,
    }


def _score(pipe, imgs: torch.Tensor, cache: ArtifactCache, phase) -> dict[str, Any]:
    """FID / KID / agreement and the paired fidelity of ``imgs``; all None (and ``nonfinite``
    True) when a sample is not finite, which is never scored."""
    nonfinite = not bool(torch.isfinite(imgs).all())
    metrics: dict[str, Any] = {"fid": None, "kid": None, "extractor": None, "agreement": None}
    metrics["fid_boot_sd"] = metrics["kid_boot_sd"] = None
    metrics.update(dict.fromkeys(PAIRED_FIELDS))
    if not nonfinite:
        phase("score")
        metrics = pipe.evaluate(imgs, cache)
        metrics.update(paired_fidelity(pipe.cell, imgs, cache, pipe.data))
    return {
        "calibration_flop_ratio": None if pipe.calibration is None else pipe.calibration.achieved,
        "fid": metrics["fid"],
        # FID's sampling noise: its sd over bootstrap resamples of the samples (bench.intervals)
        "fid_boot_sd": metrics["fid_boot_sd"],
        "kid": metrics["kid"],
        "kid_boot_sd": metrics["kid_boot_sd"],
        "extractor": metrics["extractor"],
        # Conditional cells: the share of samples the offline classifier puts in the class
        # their prompt or label asks for (None for unconditional cells).
        "agreement": metrics.get("agreement"),
        # Against the uncompressed pipeline's samples from the same noise (bench.paired).
        **{name: metrics[name] for name in PAIRED_FIELDS},
        "nonfinite": nonfinite,
    }


def threads_per_worker(workers: int) -> int:
    """This machine's cores split between ``workers`` processes (at least one each)."""
    return max(1, (os.cpu_count() or 1) // workers)


def run_and_store(
    cell: Cell,
    out: str | Path,
    cache_dir: str | None = None,
    threads: int | None = None,
    data: DataSource | None = None,
    phase: Callable[[str], None] | None = None,
) -> tuple[str, str | None]:
    """Claim ``cell``, run it and write its record (or, if it raised, its failure). Returns
    (status, error) with status "done", "failed", "claimed" (another process holds the cell)
    or "unsaved" (computed, but the record could not be written: it is logged in full so it
    is not lost). Safe to call from any process that sees ``out``: this is the unit of work of
    every executor."""
    out = Path(out)
    if threads:
        torch.set_num_threads(threads)
    with claim(out, cell) as mine:
        if not mine:
            log.info("cell %s (%s) is being run by another process", cell.key, cell.label())
            return "claimed", None
        if read_record(out, cell) is not None:  # finished by another process meanwhile
            return "done", None
        try:
            rec = run_cell(
                cell,
                ArtifactCache(cache_dir),
                sample_grid=sample_path(out, cell),
                data=data,
                phase=phase,
            )
        except Exception as e:  # a real failure: record it, let the sweep go on
            error = f"{type(e).__name__}: {e}"
            log.error("cell %s (%s) failed: %s", cell.key, cell.label(), error)
            try:
                write_failure(out, cell, error + "\n" + traceback.format_exc())
            except OSError as io_error:
                log.error("its failure record could not be saved: %s", os_error_line(io_error))
            return "failed", error
        try:
            write_record(out, cell, rec)
        except OSError as e:
            error = f"record not saved: {os_error_line(e)}"
            log.error(
                "cell %s (%s) finished but its %s; the record:\n%s",
                cell.key,
                cell.label(),
                error,
                json.dumps(rec),
            )
            return "unsaved", error
    fid = "not scored (nonfinite samples)" if rec["fid"] is None else f"{rec['fid']:.2f}"
    log.info("cell %s done: %s, FID %s", cell.key, cell.label(), fid)
    return "done", None
