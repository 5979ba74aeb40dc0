"""DyDiT's routers as trained: the FLOP ratio they give at DyDiT's own threshold (0.5, no
calibration) against the target each model was trained for, and the width pattern per timestep.

``python -m bench.studies.dydit_widths --targets 0.8 0.65 0.5`` loads (or fine-tunes) the
``dydit`` model of each target on the data set's converged ``full`` model, samples ``--samples``
images with DDIM (seed 0) through the executor with the ``dydit`` policy at threshold 0.5, and
writes to ``--out``: ``widths.csv`` (per target: achieved FLOP ratio per call, target, error),
``widths.md`` and ``dydit_widths.png``: per target, three heatmaps over (block, sampling step)
of the active fraction of heads, MLP channel groups and MLP tokens.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from adaptive.dydit_policy import DyDiT
from bench.cache import ArtifactCache, atomic_write_bytes
from bench.cli import make_parser
from bench.data import DatasetError, dataset_info
from bench.sampling import generate
from bench.studies.plotting import write_png
from bench.train import BUDGETS, TrainConfig, load_or_train
from blockloop import EarlyExitDenoiser

__all__ = ["main", "width_pattern"]

PARTS = ("heads", "groups", "tokens")


def width_pattern(cfg: TrainConfig, cache: ArtifactCache, samples: int, steps: int) -> dict:
    """Sample ``cfg``'s model at threshold 0.5; returns its FLOP ratio per call and the active
    fraction of each part as (calls, depth) arrays."""
    trained = load_or_train(cfg, cache, progress=True)
    policy = DyDiT(0.5)
    ex = EarlyExitDenoiser(trained.model, policy, trained.schedule.T)
    info = dataset_info(cfg.dataset)
    shape = (info.channels, info.img_size, info.img_size)
    with torch.no_grad():
        generate(ex, trained.schedule, "ddim", steps, samples, shape, batch_size=250, seed=0)
    calls = policy.widths[:steps]  # the first batch's calls (every batch repeats the pattern)
    out = {"flop_ratio": ex.flop_ratio, "t": np.array([c["t"] for c in calls])}
    for part in PARTS:
        out[part] = np.array([c[part] for c in calls], dtype=float)
    return out


def _figure(results: dict[float, dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    fig, axes = plt.subplots(n, 3, figsize=(10, 2.6 * n), squeeze=False, layout="constrained")
    for row, (target, res) in enumerate(results.items()):
        for col, part in enumerate(PARTS):
            ax = axes[row][col]
            im = ax.imshow(res[part].T, aspect="auto", vmin=0, vmax=1, cmap="viridis")
            ticks = range(0, len(res["t"]), max(1, len(res["t"]) // 5))
            ax.set_xticks(list(ticks), [f"{res['t'][i]:.0f}" for i in ticks])
            ax.set(xlabel="timestep t (sampling order)", ylabel="block")
            ax.set_title(
                f"target {target:g}: {part} on (FLOPs {res['flop_ratio']:.3f})", fontsize=9
            )
    fig.colorbar(im, ax=axes, shrink=0.6, label="active fraction")
    write_png(fig, out / "dydit_widths.png", dpi=120)


def _parser():
    p = make_parser("bench.studies.dydit_widths", __doc__)
    p.add_argument("--dataset", default="digits", help="training data")
    p.add_argument("--model", default="tiny", help="size by name")
    p.add_argument("--recipe", default="dydit", choices=["dydit", "dydit-width", "dydit-token"])
    p.add_argument("--targets", type=float, nargs="+", default=[0.8, 0.65, 0.5])
    p.add_argument("--samples", type=int, default=250, help="samples (one batch of 250)")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps")
    p.add_argument("--out", default="results/dydit-widths", help="output folder")
    p.add_argument("--cache-dir", default=None, help="artifact cache (default: <repo>/.cache)")
    return p


def main(argv: list[str] | None = None) -> int:
    """The command line (module docstring); 0 on success, 2 on bad arguments."""
    p = _parser()
    a = p.parse_args(argv)
    if a.samples < 1 or a.steps < 1:
        p.error(f"--samples and --steps must be >= 1, got {a.samples}, {a.steps}")
    try:
        budget = BUDGETS.get(a.model)
        extra = (
            {}
            if budget is None
            else dict(
                steps=budget.steps, finetune_steps=budget.finetune_steps, **budget.optimiser()
            )
        )
        cfgs = {
            t: TrainConfig(
                dataset=a.dataset, model=a.model, recipe=a.recipe, flop_target=t, **extra
            ).normalised()
            for t in a.targets
        }
    except (ValueError, DatasetError) as e:
        p.error(str(e))
    cache = ArtifactCache(a.cache_dir)
    results = {t: width_pattern(cfg, cache, a.samples, a.steps) for t, cfg in cfgs.items()}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(
        [
            {
                "recipe": a.recipe,
                "target": t,
                "flop_ratio": r["flop_ratio"],
                "error": r["flop_ratio"] - t,
            }
            for t, r in results.items()
        ]
    )
    atomic_write_bytes(out / "widths.csv", df.to_csv(index=False).encode())
    atomic_write_bytes(out / "widths.md", df.to_markdown(index=False, floatfmt=".3f").encode())
    _figure(results, out)
    print(df.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
