"""FID along one axis of the sweep: the guidance scale, and the number of denoiser calls per
solver."""

from __future__ import annotations

from pathlib import Path

from bench.studies.plotting import Saver, legend_outside, plain, save


def plot_fid_vs_guidance(df, out: Path, *, save: Saver = save) -> list[Path]:
    """FID (and, where recorded, the agreement: the share of samples the classifier puts in
    the asked-for class) against the classifier-free guidance scale, one line per (recipe,
    policy and its FLOP target, exit option, FID reference, prompt templates)."""
    import matplotlib.pyplot as plt
    import pandas as pd

    g = df[df.guidance.notna()] if "guidance" in df else df.iloc[:0]
    if g.guidance.nunique() < 2:
        return []
    defaults = {"reference": "train", "recipe": "full", "target_flop_ratio": None,
                "text": None, "prompts": "heldout", "agreement": None}  # fmt: skip
    g = g.assign(**{k: v for k, v in defaults.items() if k not in g})  # older frames
    g = g.assign(
        target=g.target_flop_ratio.apply(lambda v: "" if pd.isna(v) else f"@{v:g}"),
        prompt=[
            f", {p} prompts" if isinstance(t, str) else ""
            for t, p in zip(g.text, g.prompts, strict=True)
        ],
    )
    agree = g.agreement.notna().any()
    fig, axes = plt.subplots(
        1, 2 if agree else 1, figsize=(11 if agree else 5.5, 4), squeeze=False,
        layout="constrained",
    )  # fmt: skip
    keys = ["recipe", "policy", "target", "cfg_exit_together", "reference", "prompt"]
    for (recipe, policy, target, together, ref, prompt), sub in g.groupby(keys):
        sub = sub.sort_values("guidance")
        name = f"{recipe} {policy}{target}{' (exit together)' if together else ''}"
        name += f", FID vs {ref}{prompt}"
        line = axes[0][0].plot(sub.guidance, sub.fid, "o-", label=name)[0]
        if agree:
            axes[0][1].plot(
                sub.guidance, 100 * sub.agreement.astype(float), "o-", color=line.get_color()
            )
    ax = axes[0][0]
    ax.set_xlabel("guidance scale (0 = null condition only, 1 = conditional)")
    ax.set_ylabel("FID (lower is better)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.set_title("FID vs classifier-free guidance", fontsize=10)
    if agree:
        a = axes[0][1]
        a.set_xlabel("guidance scale")
        a.set_ylabel("agreement: samples classified as asked (%)")
        a.grid(alpha=0.3)
        a.set_title("agreement vs classifier-free guidance", fontsize=10)
    legend_outside(axes[0][-1], *axes[0][0].get_legend_handles_labels(), fontsize=7)
    paths = save(fig, out, "fid_vs_guidance")
    plt.close(fig)
    return paths


def plot_fid_vs_nfe(df, out: Path, *, save: Saver = save) -> list[Path]:
    """FID against NFE per solver (full unpruned model, no guidance), log-log."""
    import matplotlib.pyplot as plt

    keep = plain(df)
    if "guidance" in df:
        keep &= df.guidance.isna()
    d = df[keep]
    # Seeds of one solver and NFE are averaged (the legend says how many points are means).
    d = d.assign(spacing=d.spacing.fillna("")).groupby(["solver", "nfe", "spacing"], as_index=False)
    d = d.agg(
        fid=("fid", "mean"),
        seeds=("seed", "nunique"),
        dataset=("dataset", "first"),
        model=("model", "first"),
        steps=("steps", "first"),
    )
    lines = [(name, sub) for name, sub in d.groupby("solver") if sub.nfe.nunique() >= 2]
    if not lines:
        return []
    ref = d[d.steps == d.steps.max()].head(1)
    panels = [
        (title, [(n, sub) for n, sub in lines if (sub.spacing == "").all() == default])
        for title, default in (("default grids", True), ("chosen spacing", False))
    ]
    panels = [p for p in panels if p[1]]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.8), squeeze=False)
    axes = axes[0]
    cmap = plt.get_cmap("tab20")
    for ax, (title, group) in zip(axes, panels, strict=True):
        for i, (name, sub) in enumerate(group):
            sub = sub.sort_values("nfe")
            seeds = f" ({sub.seeds.max()} seeds)" if sub.seeds.max() > 1 else ""
            ax.plot(sub.nfe, sub.fid, "o-", ms=3.5, color=cmap(i % 20), label=name + seeds)
        if len(ref):
            r = ref.iloc[0]
            n = f", mean of {r.seeds} seeds" if r.seeds > 1 else ""
            ax.axhline(r.fid, color="k", ls="--", lw=1, label=f"{r.solver}-{r.steps}{n}")
            ax.axhline(1.05 * r.fid, color="k", ls=":", lw=0.8, label="1.05 x that")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("denoiser calls (NFE)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    axes[0].set_ylabel("FID (lower is better)")
    fig.suptitle(f"FID vs NFE ({d.dataset.iloc[0]}, {d.model.iloc[0]} model)", fontsize=10)
    paths = save(fig, out, "fid_vs_nfe")
    plt.close(fig)
    return paths
