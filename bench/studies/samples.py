"""How many samples does a FID need? FID's spread against the sample count (issue 38).

``python -m bench.studies.samples --sizes 1000 2000 5000`` generates the largest size once from
one cell (default: the shipped `full` model, DDIM 20, seed 0), splits it into disjoint sets of
each size (independent draws of the same pipeline), and per size reports FID's mean and its sd
across those sets, the bootstrap sd of one set (:mod:`bench.intervals`, what every record
carries), KID alike, and the smallest FID difference two cells of that size can resolve at 95%
(``1.96 * sqrt(2) * sd``). Writes ``samples.csv``, ``samples.md`` and ``samples.png`` to
``--out``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from bench.cache import ArtifactCache, atomic_write_bytes
from bench.cell import Cell
from bench.cli import make_parser
from bench.intervals import Z
from bench.pipeline import build_pipeline
from bench.studies.plotting import write_png

__all__ = ["main", "spread_by_size"]


def spread_by_size(pipe, images, sizes: list[int], cache: ArtifactCache) -> pd.DataFrame:
    """One row per size: FID / KID over the disjoint sets of that size in ``images``."""
    rows = []
    for n in sizes:
        sets = [images[i : i + n] for i in range(0, len(images) - n + 1, n)]
        scores = [pipe.evaluate(s, cache) for s in sets]
        fid = np.array([s["fid"] for s in scores])
        kid = np.array([s["kid"] for s in scores])
        sd = float(fid.std(ddof=1)) if len(fid) > 1 else math.nan
        boot = float(np.mean([s["fid_boot_sd"] for s in scores]))
        rows.append(
            {
                "samples": n,
                "sets": len(sets),
                "fid_mean": float(fid.mean()),
                "fid_sd_across_sets": sd,
                "fid_boot_sd": boot,
                "kid_mean": float(kid.mean()),
                "kid_boot_sd": float(np.mean([s["kid_boot_sd"] for s in scores])),
                # two cells of this size differ at 95% when their FIDs differ by more than this
                "resolvable_fid_difference": Z * math.sqrt(2) * (sd if len(fid) > 2 else boot),
            }
        )
    return pd.DataFrame(rows)


def _figure(df: pd.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6), layout="constrained")
    ax.errorbar(
        df["samples"], df["fid_mean"], yerr=Z * df["fid_boot_sd"], fmt="o-", capsize=3,
        label="FID (mean over disjoint sets) +- 1.96 bootstrap sd",
    )  # fmt: skip
    ax.set(xscale="log", xlabel="samples per FID", ylabel="FID")
    ax.set_title("FID's spread against the sample count", fontsize=10)
    ax.legend(fontsize=8)
    write_png(fig, out / "samples.png")


def _parser():
    p = make_parser("bench.studies.samples", __doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 5000])
    p.add_argument("--model", default="tiny", help="size by name")
    p.add_argument("--recipe", default="full", help="training recipe of the model")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps")
    p.add_argument("--out", default="results/samples", help="output folder")
    p.add_argument("--cache-dir", default=None, help="artifact cache (default: <repo>/.cache)")
    return p


def main(argv: list[str] | None = None) -> int:
    """The command line (module docstring); 0 on success, 2 on bad arguments."""
    p = _parser()
    a = p.parse_args(argv)
    if min(a.sizes) < 2:
        p.error(f"--sizes must be >= 2 (FID needs a covariance), got {a.sizes}")
    try:
        cell = Cell(model=a.model, recipe=a.recipe, steps=a.steps, samples=max(a.sizes))
    except ValueError as e:
        p.error(str(e))
    cache = ArtifactCache(a.cache_dir)
    pipe = build_pipeline(cell, cache)
    images, _ = pipe.sample(cell.samples, cell.seed)
    df = spread_by_size(pipe, images, sorted(a.sizes), cache)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "samples.csv", df.to_csv(index=False).encode())
    md = df.to_markdown(index=False, floatfmt=".4g")
    atomic_write_bytes(out / "samples.md", (md + "\n").encode())
    _figure(df, out)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
