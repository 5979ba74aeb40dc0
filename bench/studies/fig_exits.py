"""Figures for adaptive early exiting on the digits default.

``python -m bench.studies.fig_exits`` runs the cells of ``bench/sweeps/fig_exits.toml`` (or
``--config``) into the grid's store under ``<out>/grid`` (resumable: finished cells are reused),
then writes from their records:

1. FID of each recipe's model at full depth (does the layer-wise / UAL training keep quality?);
2. every exit policy at knobs calibrated to FLOP ratios 0.8 / 0.65 / 0.5 under DDIM 50 steps:
   achieved FLOP ratio, layer ratio and FID (1,000 samples, same seed for every row);
3. wall-clock of one denoiser call at batch 256 through the executor relative to the plain
   forward, against the FLOP ratio achieved, for `uem` at the calibrated knobs, and the
   never-exit overhead (`full` policy); medians of interleaved repeats;
4. exit block by timestep for `uem` (mean over samples, from the record's exit histogram).

Results go to ``<out>/figures.{md,json}`` and ``<out>/uem_exit_by_t.png``, written atomically.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adaptive.policies import make_policy
from bench.cache import ArtifactCache, atomic_write_bytes
from bench.cell import Cell
from bench.cli import add_run_options, make_parser
from bench.data import as_tensors, load_dataset
from bench.devices import resolve_device
from bench.executors import RunOptions, run_inprocess
from bench.grid import load_config
from bench.measure import wall_table, write_figures
from bench.pipeline import build_pipeline
from bench.store import pending, read_record

log = logging.getLogger(__name__)

SWEEP = Path(__file__).parents[1] / "sweeps" / "fig_exits.toml"


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.studies.fig_exits``: run the sweep's cells, then write the exit
    figures; returns 1 if a cell failed."""
    p = make_parser("bench.studies.fig_exits", __doc__)
    p.add_argument("--config", type=Path, default=SWEEP, help="the sweep file")
    p.add_argument(
        "--samples",
        type=int,
        default=None,
        help="override every cell's samples (default: each cell's)",
    )
    p.add_argument("--batch", type=int, default=256, help="batch for the wall-clock figure")
    p.add_argument("--repeats", type=int, default=7, help="interleaved wall-clock repeats")
    add_run_options(p, out="results/exits")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        device = resolve_device(a.device)
        cells = load_config(a.config, device=str(device))
        if a.samples is not None:
            cells = [dataclasses.replace(c, samples=a.samples) for c in cells]
        if a.batch < 1 or a.repeats < 1:
            raise ValueError("--batch and --repeats must be >= 1")
        grid = Path(a.out) / "grid"  # --out and the cache: checked by the parser
    except ValueError as e:
        p.error(str(e))
    run_inprocess(pending(cells, grid), grid, RunOptions(a.cache_dir))
    records = [r for c in cells if (r := read_record(grid, c)) is not None]
    if len(records) < len(cells):
        print(f"{len(cells) - len(records)} cell(s) failed (see {grid / 'failed'}); rerun")
        return 1
    report = exit_figures(records, ArtifactCache(a.cache_dir), device, a.batch, a.repeats)
    out = Path(a.out)
    if report["uem_exit_by_t"]:
        _plot_exit_by_t(report["uem_exit_by_t"], report["depth"], out / "uem_exit_by_t.png")
    text = _markdown(report)
    write_figures(out, text, report)
    print(text)
    return 0


def exit_figures(
    records: list[dict[str, Any]], cache: ArtifactCache, device: torch.device, batch, repeats
) -> dict[str, Any]:
    """The figures' data from the cells' records (plus the wall-clock table, measured now)."""
    full_depth = [r for r in records if r["policy"] == "full"]
    exiting = [r for r in records if r["policy"] != "full"]
    uem = [r for r in exiting if r["policy"] == "uem"]
    first = records[0]
    return {
        "recipes": [{"recipe": r["recipe"], "fid": r["fid"]} for r in full_depth],
        "policies": [
            {
                "policy": r["policy"],
                "recipe": r["recipe"],
                "target": r["target_flop_ratio"],
                "knob": r["knob_used"],
                "flop_ratio": r["flop_ratio_per_call"],
                "layer_ratio": r["layer_ratio"],
                "fid": r["fid"],
                "calibration_ratio": r["calibration_flop_ratio"],
            }
            for r in exiting
        ],
        "wallclock": _uem_wall_table(uem, cache, device, batch, repeats) if uem else [],
        "uem_exit_by_t": _exit_by_t(uem[len(uem) // 2]["exit_histogram"]) if uem else [],
        "depth": len(first["exit_histogram"]["counts"][0]),
        "samples": first["samples"],
        "sampler": f"{first['sampler']}-{first['steps']}",
        "extractor": first["extractor"],
        "batch": batch,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
    }


def _uem_wall_table(uem: list[dict], cache, device, batch: int, repeats: int) -> list[dict]:
    """The `uem` executor at each record's calibrated knob (and never exiting) on the records'
    model against its plain forward, on ``batch`` noisy training images with timesteps spread
    over [0, T)."""
    model = ("dataset", "model", "recipe", "finetune_steps", "lambda_u", "lambda_ual")
    never = Cell(**{k: uem[0][k] for k in model if k in uem[0]}, device=str(device))
    pipe = build_pipeline(never, cache, device, progress=False)
    schedule, model = pipe.schedule, pipe.model
    g = torch.Generator().manual_seed(7)
    x0, _ = as_tensors(load_dataset(pipe.cell.dataset, "train"))
    x0 = x0[torch.randint(len(x0), (batch,), generator=g)]
    t = torch.linspace(0, schedule.T - 1, batch).round()
    ab = schedule.alphas_cumprod[t.long()].float().view(-1, 1, 1, 1)
    x = ab.sqrt() * x0 + (1 - ab).sqrt() * torch.randn(x0.shape, generator=g)
    executors = {"never-exit": pipe.executor}
    for r in uem:
        executors[f"uem tau={r['knob_used']:.4g}"] = pipe.executor.with_policy(
            make_policy("uem", r["knob_used"])
        )
    return wall_table(model, executors, x.to(device), t.to(device), repeats)


def _exit_by_t(hist: dict[str, list]) -> list[dict[str, float]]:
    """Mean blocks executed per timestep bin, from a record's exit histogram."""
    counts = np.asarray(hist["counts"], dtype=float)
    edges = np.asarray(hist["t_edges"])
    blocks = np.arange(1, counts.shape[1] + 1)
    rows = []
    for i in range(len(counts) - 1, -1, -1):  # sampling order: high t first
        if counts[i].sum() > 0:
            mean = float((counts[i] * blocks).sum() / counts[i].sum())
            rows.append({"t": float(edges[i] + edges[i + 1]) / 2, "mean_exit_block": mean})
    return rows


def _plot_exit_by_t(by_t: list[dict], depth: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["t"] for r in by_t], [r["mean_exit_block"] for r in by_t], marker="o", ms=3)
    ax.set_xlabel("timestep t (sampling runs right to left)")
    ax.set_ylabel("mean blocks executed")
    ax.set_ylim(0, depth + 0.5)
    ax.set_title("uem: exit block by timestep")
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def _markdown(r: dict) -> str:
    L = [
        f"# Early-exit figures ({r['sampler']}, {r['samples']} samples, extractor "
        f"`{r['extractor']}`, {r['threads']} threads, torch {r['torch']})",
        "",
        "## FID of each recipe's model at full depth",
        "",
        "| recipe | FID |",
        "|---|---|",
    ]
    L += [f"| {x['recipe']} | {_fmt(x['fid'])} |" for x in r["recipes"]]
    L += [
        "",
        "## Policies at calibrated FLOP ratios",
        "",
        "| policy | recipe | target | knob | FLOP ratio | layer ratio | FID |",
        "|---|---|---|---|---|---|---|",
    ]
    L += [
        f"| {x['policy']} | {x['recipe']} | {x['target']} | {_fmt(x['knob'], '.4g')} | "
        f"{x['flop_ratio']:.3f} | {x['layer_ratio']:.3f} | {_fmt(x['fid'])} |"
        for x in r["policies"]
    ]
    if r["wallclock"]:
        L += [
            "",
            f"## Wall-clock per call vs FLOP ratio (batch {r['batch']}, medians, interleaved)",
            "",
            "| executor | FLOP ratio | wall ratio | ms/call | plain ms/call |",
            "|---|---|---|---|---|",
        ]
        L += [
            f"| {x['executor']} | {x['flop_ratio']:.3f} | {x['wall_ratio']:.3f} | "
            f"{x['ms_per_call']:.1f} | {x['plain_ms_per_call']:.1f} |"
            for x in r["wallclock"]
        ]
    if r["uem_exit_by_t"]:
        L += [
            "",
            f"## uem: mean blocks executed (of {r['depth']}) by timestep",
            "",
            "| t | blocks |",
            "|---|---|",
        ]
        L += [f"| {x['t']:.0f} | {x['mean_exit_block']:.2f} |" for x in r["uem_exit_by_t"]]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
