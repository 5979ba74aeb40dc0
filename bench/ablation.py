"""The DeeDiff / AdaDiff ablation: which departure or which scale effect explains the gap.

``python -m bench.ablation`` runs ``bench/sweeps/deediff.toml`` through the grid (cached models
and records are reused; an interrupted run resumes) and writes, under ``--out``
(``results/deediff``):

- ``ablation.md``: per variant (depth, fine-tune budget, UAL weighting, exit rule) the FID at
  full depth against the equally-trained ``full-ft`` control, and the FID at each target FLOP
  ratio; every baseline at the same ratios; the issue's three targets, each with its measured
  numbers and met / not met;
- ``layer_mse.md``: each model's per-block readout MSE on the held-out digits (what an exit
  after each block leaves; the last block's is L_simple on unseen data);
- ``report/ablation_fid_vs_flops``: FID against the FLOP ratio per call, one panel per (depth,
  budget), the control's full-depth FID and 1.10x that drawn as lines;
- ``report/ablation_heatmaps``: exit block x timestep of each ``uem`` variant at FLOP ratio 0.5;
- ``report/composition``: FID against *total* FLOPs (vs DDPM with all T steps) with one curve
  per strategy (fewer steps, exits at each step count, pruning, pruning + exits) and the
  Pareto front: the paper's claim that adaptive computation composes with both;
- the grid report (``bench.report``) of the same records.

``--report-only`` redraws from the records without running cells.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

import numpy as np
import torch

from bench.cache import ArtifactCache, atomic_write_bytes
from bench.report import _save, heatmap_grid, load_table, make_report, pareto_front
from bench.train import TrainConfig
from models import MODELS

__all__ = ["ablation_table", "aggregate", "layer_mse", "main", "variants"]

log = logging.getLogger(__name__)

SWEEP = Path(__file__).parent / "sweeps" / "deediff.toml"
TARGETS = (0.8, 0.65, 0.5, 0.4)
FT_DEFAULT = TrainConfig().finetune_steps  # a cell that leaves them unset gets these


def variants(df):
    """The ablation's cells (unpruned, unguided) with the trained ``model_name``, a ``variant``
    name (model and exit rule) and the ``setting`` (depth and fine-tune budget) it belongs to;
    the pre-trained `full` model is listed in its depth's settings as a reference."""
    df = df[(df.prune_ratio == 0) & df.guidance.isna()].copy()
    ft = df.finetune_steps.fillna(FT_DEFAULT).astype(int)
    depth = df.model.map(lambda m: MODELS[m]["depth"])
    df["setting"] = "depth " + depth.map(str) + ", ft " + ft.map(str)
    patience = df.patience.map(lambda p: "" if p != p or p is None else f" p{int(p)}")
    lual = df.lambda_ual.map(
        lambda v: " (L_u only)" if v == 0 else "" if v == 1 else f" (lambda_UAL {v:g})"
    )
    df["model_name"] = df.recipe + lual  # the trained model
    df["variant"] = np.where(
        df.policy == "full", df.model_name + " @full", df.model_name + " / " + df.policy + patience
    )
    return df


def _order(group) -> tuple:
    """Settings in numeric order (depth 9 before 13, 1k before 4k steps), then the run."""
    (setting, run), _ = group
    return (*(int(n) for n in re.findall(r"\d+", setting)), run)


def aggregate(df):
    """One row per (setting, run, variant, target FLOP ratio; 1.0 = full depth): FID mean, its
    standard deviation over sampling seeds (``fid_sd``, NaN for one seed), ``n`` seeds and the
    mean achieved FLOP ratio per call."""
    v = variants(df)
    v["target"] = np.where(v.policy == "full", 1.0, v.target_flop_ratio.astype(float))
    v = v[v.target.notna()]
    keys = ["setting", "run", "variant", "model_name", "recipe", "policy", "target"]
    return v.groupby(keys, as_index=False).agg(
        fid=("fid", "mean"),
        fid_sd=("fid", "std"),
        n=("fid", "size"),
        flop=("flop_ratio_per_call", "mean"),
    )


def _control(agg, setting: str, run: str):
    c = agg[(agg.variant == "full-ft @full") & (agg.setting == setting) & (agg.run == run)]
    return float(c.fid.iloc[0]) if len(c) else None


def _fid(r) -> str:
    return f"{r.fid:.2f}" + (f" ± {r.fid_sd:.2f} (n={r.n})" if r.n > 1 else "")


def ablation_table(df) -> str:
    """Markdown: per setting and run, each model's full-depth FID against the control, and
    each exit variant's FID (achieved FLOP ratio) at every target; then the targets."""
    lines = ["# DeeDiff / AdaDiff ablation", ""]
    agg = aggregate(df)
    for (setting, run), sub in sorted(agg.groupby(["setting", "run"]), key=_order):
        control = _control(agg, setting, run)
        lines += [f"## {setting}, {run} (control `full-ft` FID: {_f(control)})", ""]
        lines += ["| model | FID at full depth | vs control |", "|---|---|---|"]
        for _, r in sub[sub.policy == "full"].sort_values("fid").iterrows():
            rel = f"{r.fid / control:.3f}x" if control else "-"
            lines.append(f"| {r.model_name} | {_fid(r)} | {rel} |")
        exits = sub[sub.policy != "full"]
        if len(exits):
            head = " | ".join(f"@{t}" for t in TARGETS)
            lines += ["", f"| exit variant | {head} |", "|---|" + "---|" * len(TARGETS)]
            for name, v in sorted(exits.groupby("variant"), key=lambda kv: kv[1].fid.mean()):
                cells = []
                for t in TARGETS:
                    hit = v[np.isclose(v.target, t)]
                    cells.append(
                        f"{_fid(hit.iloc[0])} ({hit.flop.iloc[0]:.2f})" if len(hit) else "-"
                    )
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "FID (achieved FLOP ratio per call; ± the standard deviation over sampling seeds where "
        "more than one ran); control = `full-ft`, the same fine-tune with L_simple alone.",
        "",
        "## Targets (issue 13)",
        "",
        *_targets(agg),
        "",
        "## Paired by sampling seed (same initial noise): FID minus the control's",
        "",
        *_paired(variants(df)),
        "",
    ]
    return "\n".join(lines)


def _paired(v) -> list[str]:
    """Per setting: each variant at full depth and at each target, minus the control at full
    depth, over the sampling seeds both ran (a paired difference cancels most of the noise
    that 1,000-sample FIDs share through their initial noise)."""
    out = []
    for (setting, run), sub in sorted(v.groupby(["setting", "run"]), key=_order):
        control = sub[sub.variant == "full-ft @full"].set_index("seed").fid
        for (name, target), w in sorted(
            sub.groupby(["variant", sub.target_flop_ratio.fillna(1.0)]), key=lambda kv: kv[0]
        ):
            diff = (w.set_index("seed").fid - control).dropna()
            if name == "full-ft @full" or len(diff) < 2:
                continue
            out.append(
                f"- {setting}, {run}: {name} @{target:g}: {diff.mean():+.2f} ± {diff.std():.2f} "
                f"over seeds {sorted(diff.index.tolist())} ({', '.join(f'{d:+.2f}' for d in diff)})"
            )
    return out or ["- (no variant with two or more seeds shared with the control)"]


def _targets(agg) -> list[str]:
    out = []
    for (setting, run), sub in sorted(agg.groupby(["setting", "run"]), key=_order):
        control = _control(agg, setting, run)
        full_depth = sub[sub.variant == "uem @full"]
        if control is None or not len(full_depth):
            continue
        f = float(full_depth.fid.iloc[0])
        out.append(
            f"- {setting}, {run}: `uem` at full depth {f:.2f} vs control {control:.2f}: "
            f"{'met' if f <= control else 'not met'}"
        )
        exits = sub[sub.variant == "uem / uem"]
        low = exits[exits.flop <= 0.55]
        if len(low):
            best = low.loc[low.fid.idxmin()]
            ok = best.fid <= 1.10 * control
            out.append(
                f"  - at FLOP ratio {best.flop:.2f}: {best.fid:.2f} vs "
                f"1.10 x control = {1.10 * control:.2f}: {'met' if ok else 'not met'}"
            )
        base = sub[~sub.recipe.str.startswith("uem") & (sub.policy != "full")]
        for t in (0.8, 0.65, 0.5):
            mine, theirs = exits[np.isclose(exits.target, t)], base[np.isclose(base.target, t)]
            if len(mine) and len(theirs):
                best = theirs.loc[theirs.fid.idxmin()]
                ok = mine.fid.iloc[0] < best.fid
                out.append(
                    f"  - @{t}: `uem` {mine.fid.iloc[0]:.2f} vs best baseline {best.policy} "
                    f"{best.fid:.2f}: {'met' if ok else 'not met'}"
                )
    return out or ["- (no control or `uem` full-depth cell yet)"]


def _f(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def plot_ablation(df, out: Path) -> list[Path]:
    import matplotlib.pyplot as plt
    import pandas as pd

    agg = aggregate(df)
    groups = sorted(agg.groupby(["setting", "run"]), key=_order)
    if not groups:
        return []
    fig, axes = plt.subplots(
        1, len(groups), figsize=(5.6 * len(groups), 4.6), squeeze=False, layout="constrained"
    )
    # One colour per variant across panels, one legend for the figure (outside the data).
    names = sorted(
        agg[agg.policy != "full"].variant.unique(), key=lambda n: (not n[:3] == "uem", n)
    )
    cmap = plt.get_cmap("tab20")
    colour = {n: cmap(i % 20) for i, n in enumerate(names)}
    handles: dict[str, object] = {}
    for ax, ((setting, run), sub) in zip(axes.flat, groups, strict=True):
        exits = sub[sub.policy != "full"]
        for name, v in exits.groupby("variant"):
            full = sub[(sub.policy == "full") & (sub.model_name == v.model_name.iloc[0])]
            v = pd.concat([full, v]).sort_values("flop")
            uem = name.startswith("uem")
            handles[name] = ax.errorbar(
                v.flop,
                v.fid,
                yerr=v.fid_sd.fillna(0),
                fmt="o-" if uem else "s--",
                color=colour[name],
                lw=2 if uem else 1,
                ms=4,
                alpha=1 if uem else 0.7,
                capsize=2,
            )
        control = _control(agg, setting, run)
        if control is not None:
            handles["control (full-ft) at full depth"] = ax.axhline(control, color="k", lw=1.2)
            handles["1.10 x control"] = ax.axhline(1.1 * control, color="k", lw=0.8, ls=":")
        ax.set_xlabel("FLOP ratio per denoiser call")
        ax.set_ylabel("FID (lower is better; log scale)")
        ax.set_yscale("log")  # the L_u-only variant reaches FID ~1000
        ax.set_title(f"{setting}, {run}", fontsize=9)
        ax.grid(alpha=0.3, which="both")
    fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=7)
    paths = _save(fig, out, "ablation_fid_vs_flops")
    plt.close(fig)
    return paths


def plot_uem_heatmaps(df, out: Path, target: float = 0.5) -> list[Path]:
    df = variants(df)
    pick = df[
        df.recipe.str.startswith("uem")
        & df.policy.str.startswith("uem")
        & np.isclose(df.target_flop_ratio.astype(float).fillna(-1), target)
    ]
    # One panel per variant (its lowest sampling seed), settings in numeric order.
    pick = pick.sort_values("seed").drop_duplicates(["setting", "run", "variant"])
    pick = pick.assign(
        _key=[_order(((s, r), None)) for s, r in zip(pick.setting, pick.run, strict=True)]
    )
    pick = pick.sort_values(["_key", "variant"])
    if not len(pick):
        return []
    panels = [
        (r.exit_histogram, f"{r.setting}: {r.variant}\nFID {r.fid:.2f}") for _, r in pick.iterrows()
    ]
    return heatmap_grid(panels, out, "ablation_heatmaps")


def strategy(r) -> str:
    """The composition figure's curve a cell belongs to."""
    exits = r.policy != "full"
    if r.prune_ratio > 0:
        return "pruning + exits" if exits else "pruning"
    if exits:
        return f"exits, {r.run}"
    return "fewer steps (full depth)"


def plot_composition(df, out: Path) -> list[Path]:
    """FID vs total FLOPs for the default model pair (`full-ft` control and `uem`, both with the
    default fine-tune), one curve per strategy, and the Pareto front over all of them."""
    import matplotlib.pyplot as plt

    model = "tiny" if (df.model == "tiny").any() else df.model.iloc[0]
    d = df[
        (df.model == model)
        & df.finetune_steps.isna()
        & df.guidance.isna()
        & (df.lambda_ual == 1.0)
        & df.patience.isna()
        & (
            ((df.recipe == "full-ft") & (df.policy == "full"))
            | ((df.recipe == "uem") & (df.policy == "uem"))
        )
    ].copy()
    if len(d) < 2:
        return []
    d["label_run"] = d.run
    d["strategy"] = d.apply(strategy, axis=1)
    # One point per pipeline: sampling seeds averaged (their spread is in ablation.md).
    d["target"] = d.target_flop_ratio.fillna(1.0)
    d = d.groupby(["strategy", "label_run", "target", "prune_ratio"], as_index=False).agg(
        fid=("fid", "mean"),
        flop_ratio_vs_reference=("flop_ratio_vs_reference", "mean"),
        label=("label", "first"),
    )
    fig, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    cmap = plt.get_cmap("tab10")
    for i, (name, s) in enumerate(sorted(d.groupby("strategy"))):
        s = s.sort_values("flop_ratio_vs_reference")
        style = "o-" if name.startswith("fewer") else "s--" if name.startswith("prun") else "^-"
        ax.plot(s.flop_ratio_vs_reference, s.fid, style, color=cmap(i % 10), ms=4, label=name)
    front = d.iloc[pareto_front(d.flop_ratio_vs_reference.to_numpy(float), d.fid.to_numpy(float))]
    ax.step(front.flop_ratio_vs_reference, front.fid, where="post", color="k", lw=1.2, alpha=0.6)
    ax.plot([], [], "k-", alpha=0.6, label="Pareto front")
    for _, r in front.iterrows():
        ax.annotate(
            r.label.replace("full-ft full ", "").replace("uem uem", "uem"),
            (r.flop_ratio_vs_reference, r.fid),
            fontsize=6,
            alpha=0.8,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("total FLOPs / DDPM with all T steps (full unpruned model)")
    ax.set_ylabel("FID (lower is better)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title("Do exits compose with fewer steps and pruning? (digits, 1,000 samples)")
    paths = _save(fig, out, "composition")
    plt.close(fig)
    return paths


@torch.inference_mode()
def layer_mse(model, schedule, images, seed: int = 0, repeats: int = 4) -> list[float]:
    """Per-block readout MSE against the true noise on ``images`` (held-out digits) at
    timesteps drawn uniformly from [0, T): the denoising error an exit after each block leaves.
    The last entry is the full model's training objective, L_simple, on unseen data."""
    gen = torch.Generator().manual_seed(seed)
    ab = schedule.alphas_cumprod.float()
    sums = torch.zeros(model.depth, dtype=torch.float64)
    for _ in range(repeats):
        t = torch.randint(0, schedule.T, (images.shape[0],), generator=gen)
        eps = torch.randn(images.shape, generator=gen)
        a = ab[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * images + (1 - a).sqrt() * eps
        for i, out in enumerate(model.forward_all(x_t, t.float())):
            sums[i] += float(((out - eps) ** 2).mean())
    return (sums / repeats).tolist()


def layer_mse_table(df, cache, device: str = "cpu") -> str:
    """Markdown: the per-block held-out MSE of every unpruned, unguided model in the records."""
    import pandas as pd

    from bench.cell import Cell, cell_train_config
    from bench.data import as_tensors, load_dataset
    from bench.train import load_or_train

    lines = [
        "# Per-block denoising MSE on the held-out digits",
        "",
        "Readout after each block vs the true noise, t uniform in [0, T), 4 x 359 draws "
        "(`bench.ablation.layer_mse`). The last column is L_simple of the full-depth model.",
        "",
    ]
    models = df[(df.prune_ratio == 0) & df.guidance.isna()].drop_duplicates(
        ["dataset", "model", "recipe", "finetune_steps", "lambda_u", "lambda_ual"]
    )
    images = {}
    for model_name, sub in models.groupby("model", sort=False):
        rows = []
        for _, r in sub.iterrows():
            ft = None if pd.isna(r.finetune_steps) else int(r.finetune_steps)
            cell = Cell(
                dataset=r.dataset,
                model=r.model,
                recipe=r.recipe,
                finetune_steps=ft,
                lambda_u=float(r.lambda_u),
                lambda_ual=float(r.lambda_ual),
            )
            tm = load_or_train(cell_train_config(cell), cache, device, progress=False)
            if r.dataset not in images:
                images[r.dataset] = as_tensors(load_dataset(r.dataset, "heldout"))[0]
            mse = layer_mse(tm.model, tm.schedule, images[r.dataset].to(device))
            rows.append((cell.model_label(), mse))
        depth = len(rows[0][1])
        lines += [f"## {model_name} ({depth} blocks)", ""]
        lines += ["| model | " + " | ".join(f"b{i + 1}" for i in range(depth)) + " |"]
        lines += ["|---|" + "---|" * depth]
        for name, mse in sorted(rows, key=lambda kv: kv[1][-1]):
            lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in mse) + " |")
        lines.append("")
    return "\n".join(lines)


def write_ablation(
    grid_dir: Path, cache: ArtifactCache | None = None, device: str = "cpu"
) -> list[Path]:
    """The tables and figures of the ablation from the records under ``grid_dir`` (the
    per-block MSE table loads each model from ``cache``)."""
    import matplotlib

    matplotlib.use("Agg")
    df = load_table(grid_dir)
    ok = df[~df.nonfinite.astype(bool) & df.fid.notna()].copy()
    defaults = {"finetune_steps": None, "patience": None, "lambda_u": 1.0, "lambda_ual": 1.0}
    for name, default in defaults.items():  # records written before the field existed
        if name not in ok:
            ok[name] = default
        elif default is not None:
            ok[name] = ok[name].fillna(default)
    out = grid_dir / "report"
    # The ablation's own sampler and steps: the run with the most cells (DDIM 20 by default).
    main_run = ok[ok.run == ok.run.value_counts().idxmax()]
    atomic_write_bytes(grid_dir / "ablation.md", ablation_table(main_run).encode())
    paths = [grid_dir / "ablation.md"]
    paths += plot_ablation(main_run, out)
    paths += plot_uem_heatmaps(main_run, out)
    paths += plot_composition(ok, out)
    mse = layer_mse_table(main_run, cache or ArtifactCache(), device)
    atomic_write_bytes(grid_dir / "layer_mse.md", mse.encode())
    return [*paths, grid_dir / "layer_mse.md"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.ablation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, default=SWEEP, help="the ablation's sweep file")
    p.add_argument("--out", type=Path, default=Path("results/deediff"), help="records, tables")
    p.add_argument("--cache-dir", default=None, help="artifact cache (default: <repo>/.cache)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: each cell's)")
    p.add_argument("--report-only", action="store_true", help="draw from existing records")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rc = 0
    if not a.report_only:
        from bench import grid

        args = ["--config", str(a.config), "--out", str(a.out)]
        args += ["--cache-dir", a.cache_dir] if a.cache_dir else []
        args += ["--device", a.device] if a.device else []
        rc = grid.main(args)
    try:
        cache = ArtifactCache(a.cache_dir)
        device = a.device or "cpu"
        paths = write_ablation(a.out, cache, device) + make_report(a.out, a.out / "report")
    except ValueError as e:
        p.error(str(e))
    print((a.out / "ablation.md").read_text())
    for path in paths:
        print(path)
    return rc


if __name__ == "__main__":
    sys.exit(main())
