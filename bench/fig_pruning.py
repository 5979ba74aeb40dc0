"""Figures for structured pruning on the digits default.

``python -m bench.fig_pruning`` prunes the default `full` checkpoint at each ratio with each
criterion, fine-tunes it, and measures: parameters and MACs (torch-pruning's
``count_ops_and_params``) against the executor's FLOP count, wall-clock of one forward at batch
256 relative to the unpruned model (interleaved medians), and FID (DDIM 50, 1,000 samples)
before and after fine-tuning. A composed row prunes the `uem` checkpoint by 0.3, exits with
`uem` at its default threshold and samples with DPM-Solver++ 20 steps, reporting total FLOPs
relative to the unpruned full-depth model under DDPM with all T steps. Writes
``results/pruning/figures.{md,json}`` atomically.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
import torch_pruning as tp

from adaptive.executor import CostModel, EarlyExitDenoiser
from adaptive.policies import make_policy
from bench.cache import ArtifactCache
from bench.cli import add_run_options
from bench.data import dataset_info
from bench.measure import interleaved_medians, write_figures
from bench.metrics import evaluate, get_extractor
from bench.sampling import generate
from bench.train import TrainConfig, load_or_train, resolve_device
from pruning.core import IMPORTANCES
from pruning.pipeline import PruneConfig, load_or_prune, pruned_before_finetune

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.fig_pruning",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ratios", nargs="+", type=float, default=[0.2, 0.3, 0.5])
    p.add_argument("--importances", nargs="+", default=list(IMPORTANCES), choices=list(IMPORTANCES))
    p.add_argument("--finetune-steps", type=int, default=PruneConfig().finetune_steps)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=7)
    add_run_options(p, out="results/pruning")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        device = resolve_device(a.device)
        for r in a.ratios:
            PruneConfig(ratio=r)
    except ValueError as e:
        p.error(str(e))
    cache = ArtifactCache(a.cache_dir)
    base_cfg = TrainConfig()
    info = dataset_info(base_cfg.dataset)
    shape = (info.channels, info.img_size, info.img_size)
    ext = get_extractor("cnn", base_cfg.dataset, cache)
    base = load_or_train(base_cfg, cache, device)
    schedule = base.schedule
    T = schedule.T
    x = torch.randn(a.batch, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    t = torch.linspace(0, T - 1, a.batch).round().to(device)
    ex_in = (x[:1], t[:1])

    def fid(model) -> float:
        imgs, _ = generate(model, schedule, "ddim", 50, a.samples, shape, device=device)
        return evaluate(imgs, base_cfg.dataset, ext, cache)["fid"]

    macs0, params0 = tp.utils.count_ops_and_params(base.model, ex_in)
    flops0 = CostModel(base.model, T).full
    rows = [
        {
            "ratio": 0.0,
            "importance": "-",
            "params": params0,
            "macs": macs0,
            "flops": flops0,
            "fid_before": fid(base.model),
            "fid_after": None,
            "wall_ratio": 1.0,
        }
    ]
    models_for_time = {"unpruned": base.model}
    for ratio in a.ratios:
        for imp in a.importances:
            pc = PruneConfig(
                base=base_cfg, ratio=ratio, importance=imp, finetune_steps=a.finetune_steps
            )
            pm = load_or_prune(pc, cache, device)
            macs, params = tp.utils.count_ops_and_params(pm.model, ex_in)
            rows.append(
                {
                    "ratio": ratio,
                    "importance": imp,
                    "params": params,
                    "macs": macs,
                    "flops": CostModel(pm.model, T).full,
                    "fid_before": fid(pruned_before_finetune(pc, cache, device)),
                    "fid_after": fid(pm.model),
                    "wall_ratio": None,
                }
            )
            models_for_time[f"{ratio}/{imp}"] = pm.model
            log.info("%s", rows[-1])
    med = interleaved_medians(
        {k: (lambda m=m: m(x, t)) for k, m in models_for_time.items()}, a.repeats
    )
    for r in rows[1:]:
        r["wall_ratio"] = med[f"{r['ratio']}/{r['importance']}"] / med["unpruned"]

    # Composed: prune the uem checkpoint by 0.3, exit with uem, DPM-Solver++ 20 steps.
    uem_cfg = TrainConfig(recipe="uem")
    pc = PruneConfig(
        base=uem_cfg, ratio=0.3, importance="diff-pruning", finetune_steps=a.finetune_steps
    )
    pm = load_or_prune(pc, cache, device)
    ex = EarlyExitDenoiser(pm.model, make_policy("uem"), T)
    imgs, nfe = generate(ex, schedule, "dpm-solver++", 20, a.samples, shape, device=device)
    composed = {
        "prune": "0.3 diff-pruning (uem checkpoint)",
        "policy": repr(ex.policy),
        "sampler": "dpm-solver++ 20",
        "nfe": nfe,
        "layer_ratio": ex.layer_ratio,
        "flop_ratio_per_call_vs_unpruned": ex.flop_ratio_vs(flops0),
        "total_flops_vs_unpruned_ddpm_T": ex.executed_flops / (flops0 * T * a.samples),
        "fid": evaluate(imgs, base_cfg.dataset, ext, cache)["fid"],
    }

    report = {
        "rows": rows,
        "composed": composed,
        "samples": a.samples,
        "extractor": ext.name,
        "batch": a.batch,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
        "finetune_steps": a.finetune_steps,
    }
    L = [
        f"# Pruning figures (digits, DDIM 50, {a.samples} samples, extractor `{ext.name}`, "
        f"fine-tune {a.finetune_steps} steps, batch {a.batch} wall-clock, "
        f"{report['threads']} threads)",
        "",
        "| ratio | criterion | params | MACs (tp) | FLOPs (executor) | 2*MACs/FLOPs | "
        "wall ratio | FID before FT | FID after FT |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        after = "-" if r["fid_after"] is None else f"{r['fid_after']:.3f}"
        L.append(
            f"| {r['ratio']} | {r['importance']} | {r['params']:,} | {r['macs']:,.0f} | "
            f"{r['flops']:,} | {2 * r['macs'] / r['flops']:.3f} | {r['wall_ratio']:.3f} | "
            f"{r['fid_before']:.3f} | {after} |"
        )
    c = composed
    L += [
        "",
        "## Composed",
        "",
        f"{c['prune']} + {c['policy']} + {c['sampler']}: "
        f"layer ratio {c['layer_ratio']:.3f}, FLOPs per call vs unpruned "
        f"{c['flop_ratio_per_call_vs_unpruned']:.3f}, **total FLOPs vs unpruned full model under "
        f"DDPM {T} steps: {c['total_flops_vs_unpruned_ddpm_T']:.5f}**, FID {c['fid']:.3f}",
    ]
    text = "\n".join(L) + "\n"
    out = Path(a.out)
    write_figures(out, text, report)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
