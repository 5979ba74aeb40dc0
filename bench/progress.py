"""A sweep's progress: one bar that names the cell and its phase, with an ETA from the cells'
estimated cost rather than their count.

Cells differ in cost by two orders of magnitude (a DDPM-1000 cell against a DPM-Solver-10 one,
a cell that trains its model against one that loads it), so a bar that advances one step per
cell predicts badly. :func:`estimated_cost` prices a cell in forward-pass FLOPs of the work it
will do — training or pruning what the cache lacks, calibration, sampling and its timing
replays — and :class:`SweepProgress` advances by that, so tqdm's rate is FLOPs per second and
its remaining time is the remaining cells' cost at that rate.

Phases (:data:`PHASES`) are reported by :func:`bench.pipeline.build_pipeline` and
:func:`bench.run.run_cell` through a plain callback, so library code needs no global state.
Log lines go through :func:`tqdm.contrib.logging.logging_redirect_tqdm` while the bar is
open, so they print above it instead of breaking it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from bench.cache import ArtifactCache
from bench.cell import Cell, cell_prune_config, cell_train_config
from bench.cellcheck import model_size
from bench.data import dataset_info
from models.pretrained import describe, is_folder

__all__ = ["PHASES", "Phase", "SweepProgress", "estimated_cost"]

PHASES = ("train", "prune", "calibrate", "sample", "time", "score")
"""What a cell does, in order: train (or load) its model, prune it, calibrate the knob,
sample, time side by side, score FID / KID."""

Phase = Callable[[str], None]

# Bisection evaluations of a calibration (adaptive.calibrate) and the side-by-side timing's
# extra work as a share of sampling, both rough: the bar's rate absorbs a constant error.
_CALIBRATION_EVALS = 12
_TIMING_SHARE = 0.3
_TRAIN_FACTOR = 3  # forward + backward of a training step, in forward passes


def _forward_flops(cell: Cell) -> float:
    """FLOPs of one row through the cell's unpruned model at full depth (matmuls, analytic)."""
    m = model_size(cell.model)
    side = describe(cell.model).latent_shape[1] if is_folder(cell.model) else None
    side = side or dataset_info(cell.dataset).img_size
    tokens = (side // m["patch_size"]) ** 2 + 1 + (cell.guidance is not None)
    d = m["embed_dim"]
    return 2.0 * m["depth"] * tokens * (12 * d * d + 2 * tokens * d)


def estimated_cost(cell: Cell, cache: ArtifactCache) -> float:
    """Forward-pass FLOPs of the work ``cell`` will do, counting training and pruning only
    where ``cache`` lacks the artifact. A relative price for progress, not a measurement."""
    f = _forward_flops(cell)
    rows = 2 if cell.guidance is not None else 1
    ratio = cell.target_flop_ratio or 1.0
    sampling = cell.samples * rows * cell.steps * f * ratio * (1 + _TIMING_SHARE)
    cost = sampling
    if cell.target_flop_ratio is not None:
        cost += _CALIBRATION_EVALS * 64 * rows * cell.steps * f * ratio
    if is_folder(cell.model):
        return cost  # pretrained: nothing to train
    tcfg = cell_train_config(cell)
    if not cache.has("checkpoint", tcfg.key):
        steps = tcfg.steps if tcfg.recipe == "full" else tcfg.finetune_steps
        cost += _TRAIN_FACTOR * steps * tcfg.batch_size * f
    if cell.prune_ratio > 0:
        pcfg = cell_prune_config(cell, tcfg)
        if not cache.has("pruned", pcfg.key):
            cost += _TRAIN_FACTOR * pcfg.finetune_steps * tcfg.batch_size * f
    return cost


class SweepProgress:
    """One bar over a sweep's cells, advancing by each cell's estimated cost.

    ``start(cell)`` names the cell, ``phase(name)`` (a :data:`Phase` callback) its current
    phase, ``done(cell)`` advances the bar. With ``enabled=False`` nothing is drawn."""

    def __init__(self, cells: list[Cell], cache: ArtifactCache, enabled: bool = True) -> None:
        self.costs = {c.key: estimated_cost(c, cache) for c in cells}
        self.n, self.i = len(cells), 0
        self._label = ""
        self.bar = tqdm(
            total=sum(self.costs.values()) / 1e9,
            disable=not enabled,
            unit="GFLOP",
            unit_scale=False,
            dynamic_ncols=True,
            bar_format="{desc} {percentage:3.0f}%|{bar:20}| [{elapsed}<{remaining}]",
        )

    def start(self, cell: Cell) -> None:
        """Name ``cell``, the next one, on the bar."""
        self.i += 1
        self._label = f"cell {self.i}/{self.n} {cell.label()}"
        self.bar.set_description_str(self._label, refresh=True)

    def phase(self, name: str) -> None:
        """Show the current cell's phase ``name`` (one of :data:`PHASES`, else a ``ValueError``)."""
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r}; valid choices: {', '.join(PHASES)}")
        self.bar.set_description_str(f"{self._label}: {name}", refresh=True)

    def done(self, cell: Cell) -> None:
        """Advance the bar by ``cell``'s estimated cost."""
        self.bar.update(self.costs[cell.key] / 1e9)

    def close(self) -> None:
        """Close the bar."""
        self.bar.set_description_str(f"{self.n} cells", refresh=False)
        self.bar.close()

    @contextlib.contextmanager
    def open(self) -> Iterator[SweepProgress]:
        """The bar, with log lines printed above it, closed at the end."""
        with logging_redirect_tqdm():
            try:
                yield self
            finally:
                self.close()
