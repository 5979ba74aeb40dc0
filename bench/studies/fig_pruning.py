"""Figures for structured pruning on the digits default.

``python -m bench.studies.fig_pruning`` prunes the default `full` checkpoint at each ratio with each
criterion, fine-tunes it, and measures: parameters and MACs (torch-pruning's
``count_ops_and_params``) against the executor's FLOP count, wall-clock of one forward at batch
256 relative to the unpruned model (interleaved medians), and FID (DDIM 50, 1,000 samples)
before and after fine-tuning. A composed row (the grid's cell, built by
:func:`bench.pipeline.build_pipeline`) prunes the `uem` checkpoint by 0.3, exits with `uem` at its
default threshold and samples with DPM-Solver++ 20 steps, reporting total FLOPs relative to the
unpruned full-depth model under DDPM with all T steps. Writes
``results/pruning/figures.{md,json}`` atomically.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
import torch_pruning as tp

from bench.cache import ArtifactCache
from bench.cell import Cell
from bench.cli import add_run_options, make_parser
from bench.data import dataset_info
from bench.devices import resolve_device
from bench.measure import interleaved_medians, write_figures
from bench.metrics import evaluate, get_extractor
from bench.pipeline import build_pipeline
from bench.prune import PruneConfig, load_or_prune, pruned_before_finetune
from bench.sampling import generate
from bench.train import TrainConfig, load_or_train
from blockloop import CostModel
from pruning import DEFAULT_IMPORTANCE, IMPORTANCES, check_prune

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.studies.fig_pruning``: prune at each ratio with each criterion, then
    write the pruning figures; returns 0."""
    p = make_parser("bench.studies.fig_pruning", __doc__)
    p.add_argument(
        "--ratios", nargs="+", type=float, default=[0.2, 0.3, 0.5], help="prune ratios in [0, 1)"
    )
    p.add_argument(
        "--importances",
        nargs="+",
        default=list(IMPORTANCES),
        choices=IMPORTANCES,
        help="importance criteria to compare",
    )
    p.add_argument(
        "--finetune-steps",
        type=int,
        default=PruneConfig().finetune_steps,
        help="fine-tune budget of each pruned model (>= 1)",
    )
    p.add_argument("--samples", type=int, default=1000, help="generated samples per FID")
    p.add_argument("--batch", type=int, default=256, help="batch for the wall-clock figure")
    p.add_argument("--repeats", type=int, default=7, help="interleaved wall-clock repeats")
    add_run_options(p, out="results/pruning")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        device = resolve_device(a.device)
        for r in a.ratios:
            check_prune(r, DEFAULT_IMPORTANCE)
    except ValueError as e:
        p.error(str(e))
    cache = ArtifactCache(a.cache_dir)
    rows, flops0 = _pruning_rows(a, cache, device)
    composed = _composed(cache, device, a.samples, flops0)
    report = {
        "rows": rows,
        "composed": composed,
        "samples": a.samples,
        "extractor": composed["extractor"],
        "batch": a.batch,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
        "finetune_steps": a.finetune_steps,
    }
    text = _markdown(report)
    write_figures(Path(a.out), text, report)
    print(text)
    return 0


def _pruning_rows(a: argparse.Namespace, cache: ArtifactCache, device) -> tuple[list[dict], int]:
    """One row per (ratio, criterion) and the unpruned one: size, MACs vs executor FLOPs, wall
    ratio of one forward at batch ``a.batch`` (interleaved medians), FID before / after the
    fine-tune. Also returns the unpruned model's FLOPs per row."""
    base_cfg = TrainConfig()
    info = dataset_info(base_cfg.dataset)
    shape = (info.channels, info.img_size, info.img_size)
    ext = get_extractor("cnn", base_cfg.dataset, cache)
    base = load_or_train(base_cfg, cache, device)
    schedule = base.schedule
    T = schedule.T
    x = torch.randn(a.batch, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    t = torch.linspace(0, T - 1, a.batch).round().to(device)

    def row(model, ratio, importance, fid_before, fid_after) -> dict:
        macs, params = tp.utils.count_ops_and_params(model, (x[:1], t[:1]))
        flops = CostModel(model, T).full
        return dict(ratio=ratio, importance=importance, params=params, macs=macs, flops=flops,
                    fid_before=fid_before, fid_after=fid_after, wall_ratio=1.0)  # fmt: skip

    def fid(model) -> float:
        imgs, _ = generate(model, schedule, "ddim", 50, a.samples, shape, device=device)
        return evaluate(imgs, base_cfg.dataset, ext, cache)["fid"]

    rows = [row(base.model, 0.0, "-", fid(base.model), None)]
    timed = {"unpruned": base.model}
    for ratio in a.ratios:
        for imp in a.importances:
            pc = PruneConfig(base_cfg, ratio, imp, finetune_steps=a.finetune_steps)
            pm = load_or_prune(pc, cache, device)
            before = fid(pruned_before_finetune(pc, cache, device))
            rows.append(row(pm.model, ratio, imp, before, fid(pm.model)))
            timed[f"{ratio}/{imp}"] = pm.model
            log.info("%s", rows[-1])
    med = interleaved_medians({k: (lambda m=m: m(x, t)) for k, m in timed.items()}, a.repeats)
    for r in rows[1:]:
        r["wall_ratio"] = med[f"{r['ratio']}/{r['importance']}"] / med["unpruned"]
    return rows, rows[0]["flops"]


def _composed(cache: ArtifactCache, device, samples: int, flops0: int) -> dict:
    """The grid's composed cell: the `uem` checkpoint pruned by 0.3 (the grid's fine-tune),
    exiting with `uem` at its default threshold, DPM-Solver++ 20 steps."""
    cell = Cell(recipe="uem", policy="uem", prune_ratio=0.3, sampler="dpm-solver++", steps=20)
    pipe = build_pipeline(cell, cache, device)
    imgs, nfe = pipe.sample(samples, seed=0, batch_size=500)
    ex, T = pipe.executor, pipe.schedule.T
    metrics = pipe.evaluate(imgs, cache)
    return {
        "prune": "0.3 diff-pruning (uem checkpoint)",
        "policy": repr(ex.policy),
        "sampler": "dpm-solver++ 20",
        "nfe": nfe,
        "layer_ratio": ex.layer_ratio,
        "flop_ratio_per_call_vs_unpruned": ex.flop_ratio_vs(flops0),
        "total_flops_vs_unpruned_ddpm_T": ex.executed_flops / (flops0 * T * samples),
        "ddpm_steps": T,
        "fid": metrics["fid"],
        "extractor": metrics["extractor"],
    }


def _markdown(report: dict) -> str:
    L = [
        f"# Pruning figures (digits, DDIM 50, {report['samples']} samples, extractor "
        f"`{report['extractor']}`, fine-tune {report['finetune_steps']} steps, batch "
        f"{report['batch']} wall-clock, {report['threads']} threads)",
        "",
        "| ratio | criterion | params | MACs (tp) | FLOPs (executor) | 2*MACs/FLOPs | "
        "wall ratio | FID before FT | FID after FT |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        after = "-" if r["fid_after"] is None else f"{r['fid_after']:.3f}"
        L.append(
            f"| {r['ratio']} | {r['importance']} | {r['params']:,} | {r['macs']:,.0f} | "
            f"{r['flops']:,} | {2 * r['macs'] / r['flops']:.3f} | {r['wall_ratio']:.3f} | "
            f"{r['fid_before']:.3f} | {after} |"
        )
    c = report["composed"]
    L += [
        "",
        "## Composed",
        "",
        f"{c['prune']} + {c['policy']} + {c['sampler']}: "
        f"layer ratio {c['layer_ratio']:.3f}, FLOPs per call vs unpruned "
        f"{c['flop_ratio_per_call_vs_unpruned']:.3f}, **total FLOPs vs unpruned full model under "
        f"DDPM {c['ddpm_steps']} steps: {c['total_flops_vs_unpruned_ddpm_T']:.5f}**, "
        f"FID {c['fid']:.3f}",
    ]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
