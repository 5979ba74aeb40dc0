"""Pruned shapes against the wall-clock: does a GEMM-friendly MLP width turn pruning's saved
FLOPs into saved time (issue 35)?

``python -m bench.studies.prunewall --ratio 0.3 --round-to 0 8 16 32`` prunes the size's
trained ``full`` checkpoint at ``--ratio`` (whole heads and MLP channels, magnitude importance)
once per ``--round-to`` (the kept MLP channels a multiple of it, :class:`bench.prune.PruneConfig`
``round_to``; 0: unrounded, torch-pruning's default) and times, interleaved with the unpruned
model's plain forward on the same batch: each pruned model's plain forward (the shape's own
cost) and its forward through the executor with the ``full`` policy (what a pruned cell runs).
No fine-tune: the weights' values do not change the time, only the shapes do.

Writes ``prunewall.csv`` and ``prunewall.md`` (MLP width, parameters, FLOP ratio, wall ratios
with the repeats' range, the gap wall - FLOPs, the cores other processes used) to ``--out``.
"""

from __future__ import annotations

import copy
import statistics
import sys
from pathlib import Path

import pandas as pd
import torch

from adaptive.policies import make_policy
from bench.cache import ArtifactCache, atomic_write_bytes
from bench.cell import Cell, cell_train_config
from bench.cli import make_parser
from bench.measure import OtherLoad, interleaved_times
from bench.train import load_or_train
from blockloop import CostModel, EarlyExitDenoiser
from models import MODELS
from pruning import prune
from pruning.arch import mlp_inputs

__all__ = ["main", "prune_wall"]


def prune_wall(
    model, T: int, round_tos: list[int], ratio: float, batch: int, repeats: int
) -> pd.DataFrame:
    """One row per ``round_to`` (0: unrounded): the pruned shape's FLOP ratio and its wall
    ratios (plain forward and through the executor) against ``model``'s plain forward, all
    timed interleaved on one batch of ``batch`` rows at a mid-schedule timestep (of ``T``)."""
    x = torch.randn(batch, *model.input_shape, generator=torch.Generator().manual_seed(0))
    t = torch.full((batch,), T // 2, dtype=torch.long)
    full = CostModel(model, T).full
    calls, info = {"unpruned": lambda: model(x, t)}, {}
    for r in round_tos:
        pruned = prune(copy.deepcopy(model), ratio, "magnitude", round_to=r or None).model.eval()
        ex = EarlyExitDenoiser(pruned, make_policy("full"), T)
        calls[f"plain {r}"] = lambda m=pruned: m(x, t)
        calls[f"executor {r}"] = lambda e=ex: e(x, t)
        info[r] = (pruned, CostModel(pruned, T).full / full)
    with OtherLoad() as load:
        times = interleaved_times(calls, repeats)
    base = times["unpruned"]
    rows = []
    for r, (pruned, flop_ratio) in info.items():
        params = sum(p.numel() for p in pruned.parameters())
        row = {"round_to": r, "mlp_width": mlp_inputs(pruned)[0].out_features, "params": params}
        row["flop_ratio"] = flop_ratio
        for kind in ("plain", "executor"):
            ratios = [a / b for a, b in zip(times[f"{kind} {r}"], base, strict=True)]
            row[f"{kind}_wall"] = statistics.median(times[f"{kind} {r}"]) / statistics.median(base)
            row[f"{kind}_range"] = f"{min(ratios):.3f}-{max(ratios):.3f}"
            row[f"{kind}_gap"] = row[f"{kind}_wall"] - flop_ratio
        row["other_cores"] = load.cores
        rows.append(row)
    return pd.DataFrame(rows)


def _parser():
    p = make_parser("bench.studies.prunewall", __doc__)
    p.add_argument("--model", default="tiny", choices=list(MODELS), help="size by name")
    p.add_argument("--dataset", default="digits", help="the checkpoint's data set")
    p.add_argument("--ratio", type=float, default=0.3, help="share of heads / MLP channels pruned")
    p.add_argument(
        "--round-to", type=int, nargs="+", default=[0, 8, 16, 32], help="MLP multiples (0: none)"
    )
    p.add_argument("--batch", type=int, default=250, help="rows per call")
    p.add_argument("--repeats", type=int, default=15, help="timed repeats (after one warm-up)")
    p.add_argument("--out", default="results/prunewall", help="output folder")
    p.add_argument("--cache-dir", default=None, help="artifact cache (default: <repo>/.cache)")
    return p


def main(argv: list[str] | None = None) -> int:
    """The command line (module docstring); 0 on success, 2 on bad arguments."""
    p = _parser()
    a = p.parse_args(argv)
    if a.batch < 1 or a.repeats < 1 or any(r < 0 or r == 1 for r in a.round_to):
        p.error("--batch and --repeats must be >= 1 and every --round-to 0 (none) or >= 2")
    try:
        cell = Cell(model=a.model, dataset=a.dataset, prune_ratio=a.ratio)
    except ValueError as e:
        p.error(str(e))
    tm = load_or_train(cell_train_config(cell), ArtifactCache(a.cache_dir))
    df = prune_wall(tm.model.eval(), tm.schedule.T, a.round_to, a.ratio, a.batch, a.repeats)
    out = Path(a.out)
    atomic_write_bytes(out / "prunewall.csv", df.to_csv(index=False).encode())
    md = df.to_markdown(index=False, floatfmt=".3f")
    atomic_write_bytes(out / "prunewall.md", (md + "\n").encode())
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
