"""The DeeDiff ablation's figures: FID against FLOP ratio per variant, exit heatmaps, and the
composition of exits with fewer steps and pruning (used by :mod:`bench.studies.ablation`)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from bench.studies.ablation_tables import _control, _order, aggregate, variants
from bench.studies.plotting import heatmap_grid, pareto_front, save

__all__ = ["plot_ablation", "plot_composition", "plot_uem_heatmaps", "strategy"]

log = logging.getLogger(__name__)


def plot_ablation(df, out: Path) -> list[Path]:
    """FID against the FLOP ratio per call: a panel per (setting, run), a curve per exit
    variant and the control's FID at full depth. Returns the files written."""
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
    paths = save(fig, out, "ablation_fid_vs_flops")
    plt.close(fig)
    return paths


def plot_uem_heatmaps(df, out: Path, target: float = 0.5) -> list[Path]:
    """Exit heatmaps of the ``uem`` variants at target FLOP ratio ``target``, a panel per
    variant and setting. Returns the files written."""
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
    paths = save(fig, out, "composition")
    plt.close(fig)
    return paths
