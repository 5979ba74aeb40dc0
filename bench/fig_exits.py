"""Figures for adaptive early exiting on the digits default.

``python -m bench.fig_exits`` loads (or trains) the `full` checkpoint and fine-tunes each exit
recipe from it, then measures:

1. FID of each recipe's model at full depth (does the layer-wise / UAL training keep quality?);
2. every exit policy at knobs calibrated to FLOP ratios 0.8 / 0.65 / 0.5 under DDIM 50 steps:
   achieved FLOP ratio, layer ratio and FID (1,000 samples, same seed for every row);
3. wall-clock of one denoiser call at batch 256 through the executor relative to the plain
   forward, against the FLOP ratio achieved, for `uem` at the calibrated knobs, and the
   never-exit overhead (`full` policy); medians of interleaved repeats;
4. exit block by timestep for `uem` (mean over samples), as a table and a PNG.

Results go to ``results/exits/`` (markdown, JSON, PNG), written atomically.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from adaptive.calibrate import calibrate
from adaptive.executor import EarlyExitDenoiser
from adaptive.policies import POLICIES, make_policy
from bench.cache import ArtifactCache, atomic_write_bytes
from bench.cli import add_run_options
from bench.data import as_tensors, dataset_info, load_dataset
from bench.measure import interleaved_medians, write_figures
from bench.metrics import evaluate, get_extractor
from bench.sampling import IMAGE_SAMPLER_DEFAULTS, generate
from bench.train import TrainConfig, load_or_train, resolve_device

log = logging.getLogger(__name__)

TARGETS = (0.8, 0.65, 0.5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.fig_exits",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--sampler-steps", type=int, default=50)
    p.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    p.add_argument("--targets", nargs="+", type=float, default=list(TARGETS))
    p.add_argument("--batch", type=int, default=256, help="batch for the wall-clock figure")
    p.add_argument("--repeats", type=int, default=7, help="interleaved wall-clock repeats")
    add_run_options(p, out="results/exits")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        device = resolve_device(a.device)
    except ValueError as e:
        p.error(str(e))
    if any(not 0 < x <= 1 for x in a.targets):
        p.error("--targets must lie in (0, 1]")
    cache = ArtifactCache(a.cache_dir)
    out = Path(a.out)
    base = TrainConfig()
    info = dataset_info(base.dataset)
    shape = (info.channels, info.img_size, info.img_size)
    ext = get_extractor("cnn", base.dataset, cache)
    steps, n = a.sampler_steps, a.samples

    models = {}
    for recipe in sorted({POLICIES[p_].recipe for p_ in a.policies} | {"full"}):
        models[recipe] = load_or_train(TrainConfig(recipe=recipe), cache, device)
    schedule = models["full"].schedule

    # 1. each recipe's model at full depth
    recipe_rows = []
    for recipe, tm in models.items():
        imgs, _ = generate(tm.model, schedule, "ddim", steps, n, shape, device=device)
        recipe_rows.append(
            {"recipe": recipe, "fid": evaluate(imgs, base.dataset, ext, cache)["fid"]}
        )
        log.info("recipe %s full depth: FID %.3f", recipe, recipe_rows[-1]["fid"])

    # 2. every policy at calibrated knobs
    policy_rows, uem_trace = [], None
    for name in a.policies:
        tm = models[POLICIES[name].recipe]
        targets = [1.0] if POLICIES[name].knob_name is None else a.targets
        for target in targets:
            cal = calibrate(
                tm.model,
                schedule,
                name,
                target,
                steps=steps,
                n=64,
                sampler_kw=IMAGE_SAMPLER_DEFAULTS["ddim"],
            )
            ex = EarlyExitDenoiser(tm.model, make_policy(name, cal.knob), schedule.T)
            imgs, _ = generate(ex, schedule, "ddim", steps, n, shape, device=device)
            res = evaluate(imgs, base.dataset, ext, cache)
            row = {
                "policy": name,
                "recipe": tm.config.recipe,
                "target": target,
                "knob": cal.knob,
                "flop_ratio": ex.flop_ratio,
                "layer_ratio": ex.layer_ratio,
                "fid": res["fid"],
                "calibration_ratio": cal.achieved,
            }
            policy_rows.append(row)
            log.info("%s", row)
            if name == "uem" and uem_trace is None:
                uem_trace = ex.trace.arrays()

    # 3. wall-clock at batch a.batch on representative (x_t, t) pairs
    wall_rows = []
    if "uem" in a.policies:
        tm = models["uem"]
        g = torch.Generator().manual_seed(7)
        x0, _ = as_tensors(load_dataset(base.dataset, "train"))
        x0 = x0[torch.randint(len(x0), (a.batch,), generator=g)]
        t = torch.linspace(0, schedule.T - 1, a.batch).round()
        ab = schedule.alphas_cumprod[t.long()].float().view(-1, 1, 1, 1)
        x = ab.sqrt() * x0 + (1 - ab).sqrt() * torch.randn(x0.shape, generator=g)
        x, t = x.to(device), t.to(device)
        knobs = {"never-exit": ("full", None)}
        for r in policy_rows:
            if r["policy"] == "uem":
                knobs[f"uem tau={r['knob']:.4g}"] = ("uem", r["knob"])
        executors = {
            k: EarlyExitDenoiser(tm.model, make_policy(pn, kn), schedule.T)
            for k, (pn, kn) in knobs.items()
        }
        calls = {"plain": lambda: tm.model(x, t)}
        calls.update({k: (lambda e=e: e(x, t)) for k, e in executors.items()})
        med = interleaved_medians(calls, a.repeats)
        for k, ex in executors.items():
            ex.reset()
            with torch.inference_mode():
                ex(x, t)
            wall_rows.append(
                {
                    "executor": k,
                    "flop_ratio": ex.flop_ratio,
                    "wall_ratio": med[k] / med["plain"],
                    "ms": 1e3 * med[k],
                    "plain_ms": 1e3 * med["plain"],
                }
            )

    # 4. exit block by timestep (uem)
    by_t = []
    if uem_trace is not None:
        ts = uem_trace["t"]
        for tv in np.unique(ts)[::-1]:
            blocks = uem_trace["exit_block"][ts == tv]
            by_t.append({"t": float(tv), "mean_exit_block": float(blocks.mean() + 1)})
        _plot_exit_by_t(by_t, models["uem"].model.depth, out / "uem_exit_by_t.png")

    report = {
        "recipes": recipe_rows,
        "policies": policy_rows,
        "wallclock": wall_rows,
        "uem_exit_by_t": by_t,
        "samples": n,
        "sampler": f"ddim-{steps}",
        "extractor": ext.name,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
    }
    text = _markdown(report, models["full"].model.depth)
    write_figures(out, text, report)
    print(text)
    return 0


def _plot_exit_by_t(by_t: list[dict], depth: int, path: Path) -> None:
    import io

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


def _markdown(r: dict, depth: int) -> str:
    L = [
        f"# Early-exit figures ({r['sampler']}, {r['samples']} samples, extractor "
        f"`{r['extractor']}`, {r['threads']} threads, torch {r['torch']})",
        "",
        "## FID of each recipe's model at full depth",
        "",
        "| recipe | FID |",
        "|---|---|",
    ]
    L += [f"| {x['recipe']} | {x['fid']:.3f} |" for x in r["recipes"]]
    L += [
        "",
        "## Policies at calibrated FLOP ratios",
        "",
        "| policy | recipe | target | knob | FLOP ratio | layer ratio | FID |",
        "|---|---|---|---|---|---|---|",
    ]
    for x in r["policies"]:
        knob = "-" if x["knob"] is None else f"{x['knob']:.4g}"
        L.append(
            f"| {x['policy']} | {x['recipe']} | {x['target']} | {knob} | "
            f"{x['flop_ratio']:.3f} | {x['layer_ratio']:.3f} | {x['fid']:.3f} |"
        )
    if r["wallclock"]:
        L += [
            "",
            "## Wall-clock per call vs FLOP ratio (batch 256, medians, interleaved)",
            "",
            "| executor | FLOP ratio | wall ratio | ms/call | plain ms/call |",
            "|---|---|---|---|---|",
        ]
        L += [
            f"| {x['executor']} | {x['flop_ratio']:.3f} | {x['wall_ratio']:.3f} | "
            f"{x['ms']:.1f} | {x['plain_ms']:.1f} |"
            for x in r["wallclock"]
        ]
    if r["uem_exit_by_t"]:
        L += [
            "",
            f"## uem: mean blocks executed (of {depth}) by timestep",
            "",
            "| t | blocks |",
            "|---|---|",
        ]
        L += [f"| {x['t']:.0f} | {x['mean_exit_block']:.2f} |" for x in r["uem_exit_by_t"]]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
