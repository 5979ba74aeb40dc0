"""Fit the caches that learn something per model, sampler and step count, and cache the fits.

Three caches carry fitted parts: upstream TeaCache (``teacache-batch``: the degree-4 polynomial
that rescales its input change into an output change), MagCache (``magcache``: the per-call
residual-magnitude ratios) and Learning-to-Cache (``l2c``: the router). A grid cell fits them on
first use; ``python -m bench.studies.fitcache --cache teacache-batch magcache l2c --model tiny
--sampler ddim --steps 20`` fits them ahead of a sweep (from a few full sampling runs of the
model, :data:`bench.cachefits.TEACACHE_FIT` / :data:`bench.cachefits.L2C_TRAINING`), stores each
as an artifact of the cache (the same key a cell with these fields uses), and prints what was
fitted. A fit already in the cache is read, not redone.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from bench.cache import ArtifactCache
from bench.cell import Cell
from bench.cli import make_parser
from bench.pipeline import build_pipeline
from caching import CACHES
from models import MODELS

__all__ = ["FITTED", "fit", "main"]

# The caches with parts fitted per model, sampler and steps.
FITTED = [name for name, cls in CACHES.items() if cls.needs_fit or cls.needs_router]


def fit(cell: Cell, cache: ArtifactCache, progress: bool = True) -> dict[str, Any]:
    """Fit (or read) the fitted parts of ``cell``'s cache, with its knob left at its default
    (nothing is calibrated), and return a summary of them."""
    pipe = build_pipeline(cell, cache, progress=progress)
    policy = pipe.executor.cache
    if getattr(policy, "router", None) is not None:
        r = policy.router
        return {"router": tuple(r.shape), "mean beta (cache calls)": float(r[1::2].mean())}
    return {name: getattr(policy, name) for name in type(policy).fitted}


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.studies.fitcache``: fit and cache each ``--cache``'s parts."""
    p = make_parser("bench.studies.fitcache", __doc__)
    p.add_argument("--cache", nargs="+", default=FITTED, choices=FITTED, help="caches to fit")
    p.add_argument("--model", default="tiny", choices=list(MODELS), help="model size")
    p.add_argument("--dataset", default="digits", help="data set the model is trained on")
    p.add_argument("--sampler", default="ddim", help="sampler the fit's runs use")
    p.add_argument("--steps", type=int, default=20, help="denoiser calls per run")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance")
    p.add_argument("--cache-dir", default=None, help="artifact cache (default: <repo>/.cache)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cells = [
            Cell(
                model=a.model,
                dataset=a.dataset,
                sampler=a.sampler,
                steps=a.steps,
                guidance=a.guidance,
                cache=name,
            )
            for name in a.cache
        ]
    except (ValueError, TypeError) as e:
        p.error(str(e))
    artifacts = ArtifactCache(a.cache_dir)
    for cell in cells:
        summary = fit(cell, artifacts, progress=not a.no_progress)
        print(f"{cell.cache} ({cell.label()}):")
        for name, value in summary.items():
            print(f"  {name}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
