"""Plots of a grid sweep (matplotlib; PNG + SVG).

``python -m bench.report`` reads the records of ``python -m bench.grid`` (``results/grid``) and
writes to ``results/grid/report/``:

- ``fid_vs_flops``: FID against the total FLOP ratio (vs DDPM with all T steps on the full
  model; log scale), coloured by sampler/steps, and against the FLOP ratio per denoiser call,
  coloured by exit policy; each panel with its Pareto front (no cell is cheaper *and* better);
- ``wall_vs_flops``: each cell's wall-clock per denoiser call relative to the unpruned model's
  plain forward, timed interleaved on the same captured inputs, against the FLOP ratio per
  call, with the y = x line (the gap above it is the executor's overhead);
- ``exit_heatmap``: share of samples exiting at each block per timestep bin, one panel per
  exit policy (the cell with the most sampling steps of that policy);
- ``fid_vs_guidance``: FID against the guidance scale (sweeps with two or more scales);
- ``fid_vs_nfe``: FID against the number of denoiser calls, one line per solver (sampler,
  order, spacing) of the full unpruned model, with DDPM at all T steps as the reference line;
  left the samplers on their default grids, right those with a chosen spacing
  (``bench/sweeps/samplers.toml``);
- ``fid_vs_prune``: FID against the pruned model's FLOPs per call (vs unpruned), one line per
  pruning recipe (criterion, fine-tune budget, distillation, rounds) through its ratios, the
  train-small control hollow, with the unpruned model's FID and 1.15x / 1.5x of it
  (``bench/sweeps/pruning.toml``); one panel per sampler run;
- ``samples``: the saved sample grid of chosen cells (``--cells``: substrings of cell labels;
  default: the best FID of each policy).

Nonfinite or failed cells are never plotted (they are listed in ``summary.md``).
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.cli import make_parser
from bench.studies import (
    fig_axes,
    fig_exit_maps,
    fig_paired,
    fig_pareto,
    fig_prune,
    fig_samples,
    plotting,
)
from bench.studies.fig_pareto import wall_ratios
from bench.studies.plotting import fid_floor_of, load_table, pareto_front, seed_means

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "FIGURES",
    "FigureInputs",
    "fid_floor_of",
    "heatmap_grid",
    "load_table",
    "main",
    "make_report",
    "pareto_front",
    "plot_exit_heatmaps",
    "plot_fid_vs_flops",
    "plot_fid_vs_guidance",
    "plot_fid_vs_nfe",
    "plot_fid_vs_prune",
    "plot_fid_vs_total_flops",
    "plot_psnr_vs_total_flops",
    "plot_samples",
    "plot_wall_vs_flops",
    "seed_means",
    "wall_ratios",
]

# The names these helpers had here before bench.studies (callers and tests use them).
_save = plotting.save
_prune_recipe = fig_prune.prune_recipe
_sample_run = fig_samples.sample_run
_tiles = fig_samples.tiles
_matching = fig_samples.matching


def _saving_here(plot: Callable[..., list[Path]]) -> Callable[..., list[Path]]:
    """``plot`` writing through this module's ``_save``, looked up at each call, so that
    replacing ``bench.report._save`` reaches every figure of the report."""

    @functools.wraps(plot)
    def drawn(*args, **kwargs) -> list[Path]:
        return plot(*args, save=_save, **kwargs)

    return drawn


heatmap_grid = _saving_here(plotting.heatmap_grid)
plot_fid_vs_flops = _saving_here(fig_pareto.plot_fid_vs_flops)
plot_wall_vs_flops = _saving_here(fig_pareto.plot_wall_vs_flops)
plot_fid_vs_total_flops = _saving_here(fig_pareto.plot_fid_vs_total_flops)
plot_fid_vs_guidance = _saving_here(fig_axes.plot_fid_vs_guidance)
plot_fid_vs_nfe = _saving_here(fig_axes.plot_fid_vs_nfe)
plot_fid_vs_prune = _saving_here(fig_prune.plot_fid_vs_prune)
plot_samples = _saving_here(fig_samples.plot_samples)
plot_psnr_vs_total_flops = _saving_here(fig_paired.plot_psnr_vs_total_flops)


def plot_exit_heatmaps(df, out: Path) -> list[Path]:
    """:func:`bench.studies.fig_exit_maps.plot_exit_heatmaps`, drawn by this module's
    :func:`heatmap_grid` (looked up at each call)."""
    return fig_exit_maps.plot_exit_heatmaps(df, out, grid=heatmap_grid)


@dataclass(frozen=True)
class FigureInputs:
    """What a report figure draws from: every record (``df``), the plottable ones (``ok``:
    finite, with a FID), the grid folder, the figure folder, the ``--cells`` patterns and the
    FID floor (None where unknown)."""

    df: pd.DataFrame
    ok: pd.DataFrame
    grid_dir: Path
    out: Path
    cells: list[str] | None
    floor: float | None


# The figures of a report, in drawing order, by file name; each returns the files it wrote
# ([] where the records do not support it). Entries look plots up at each call (see above).
FIGURES: dict[str, Callable[[FigureInputs], list[Path]]] = {
    "fid_vs_flops": lambda i: plot_fid_vs_flops(i.ok, i.out, i.floor),
    "wall_vs_flops": lambda i: plot_wall_vs_flops(i.ok, i.out),
    "exit_heatmap": lambda i: plot_exit_heatmaps(i.ok, i.out),
    "fid_vs_guidance": lambda i: plot_fid_vs_guidance(i.ok, i.out),
    "fid_vs_nfe": lambda i: plot_fid_vs_nfe(i.ok, i.out),
    "fid_vs_total_flops": lambda i: plot_fid_vs_total_flops(i.ok, i.out, i.floor),
    "fid_vs_prune": lambda i: plot_fid_vs_prune(i.ok, i.out),
    "psnr_vs_total_flops": lambda i: plot_psnr_vs_total_flops(i.ok, i.out),
    "samples": lambda i: plot_samples(i.df, i.grid_dir, i.out, i.cells),
}


def make_report(
    grid_dir: Path, out: Path, cells: list[str] | None = None, cache=None
) -> list[Path]:
    """Every figure the records under ``grid_dir`` support, written to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    df = load_table(grid_dir)
    ok = df[~df.nonfinite.astype(bool) & df.fid.notna()].copy()
    if not len(ok):
        raise ValueError(f"every record under {grid_dir} is nonfinite; nothing to plot")
    if cells:
        _matching(ok, cells)  # a bad --cells fails before any figure is written
    inputs = FigureInputs(df, ok, grid_dir, out, cells, fid_floor_of(ok, cache))
    return [path for draw in FIGURES.values() for path in draw(inputs)]


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.report``: draw every figure a grid's records support, print the paths."""
    p = make_parser("bench.report", __doc__)
    p.add_argument("--grid", type=Path, default=Path("results/grid"), help="a grid's --out folder")
    p.add_argument("--out", type=Path, default=None, help="figure folder (default: GRID/report)")
    p.add_argument(
        "--cells",
        nargs="+",
        default=None,
        help="label substrings of the cells whose samples to show "
        "(default: the best FID of each policy)",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help="artifact cache holding the feature extractor, for the FID floor "
        "(default: <repo>/.cache)",
    )
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        from bench.cache import ArtifactCache, preflight

        if a.out is None:
            preflight(a.grid / "report")  # --out itself is checked by the parser
        cache = ArtifactCache(a.cache_dir)
        paths = make_report(a.grid, a.out or a.grid / "report", a.cells, cache)
    except ValueError as e:
        p.error(str(e))
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
