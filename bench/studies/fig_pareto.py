"""The cost figures: FID against FLOPs (total and per call) with Pareto fronts, and wall-clock
against FLOPs per call."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.studies.plotting import (
    ERROR_BARS,
    LEGEND_TITLE,
    Saver,
    floor_line,
    legend_outside,
    method_legend,
    plain,
    save,
    scatter_methods,
    seed_means,
    styles,
)


def plot_fid_vs_flops(
    df, out: Path, floor: float | None = None, *, save: Saver = save
) -> list[Path]:
    """Two views of every cell, each with its Pareto front: total FLOPs (the sampler's step
    count included) and FLOPs per denoiser call. Both panels show the method (colour) and the
    sampler run (marker); seeds of one cell are averaged, with their sd as error bars."""
    import matplotlib.pyplot as plt

    d = seed_means(df)
    colours, markers = styles(d)
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.8), layout="constrained")
    scatter_methods(a, d, "flop_ratio_vs_reference", colours, markers)
    a.set_xscale("log")
    a.set_xlabel("total FLOPs / DDPM (all T steps, full model)")
    a.set_title("at total cost (steps included)", fontsize=10)
    scatter_methods(b, d, "flop_ratio_per_call", colours, markers)
    b.set_xlabel("FLOPs per denoiser call / full unpruned model")
    b.set_title("per denoiser call", fontsize=10)
    for ax in (a, b):
        floor_line(ax, floor)
    h, lab = method_legend(colours, markers, bool((d.prune_ratio > 0).any()), floor)
    legend_outside(b, h, lab, fontsize=7, title=LEGEND_TITLE, title_fontsize=7)
    ext = ", ".join(sorted(df.extractor.dropna().unique()))
    spread = f"; error bars: {ERROR_BARS}" if (d.fid_sd > 0).any() else ""
    fig.suptitle(f"FID vs FLOPs ({len(d)} cells; features: {ext}{spread})", fontsize=10)
    paths = save(fig, out, "fid_vs_flops")
    plt.close(fig)
    return paths


def wall_ratios(df):
    """Each cell's seconds per image over the matching full-depth, unpruned cell's (same
    model, sampler, steps, guidance, device); cells without such a reference are dropped."""
    ref = df[plain(df)]
    keys = ["dataset", "model", "sampler", "steps", "device"]
    ref = ref[[*keys, "seconds_per_image"]].rename(columns={"seconds_per_image": "ref_s"})
    ref = ref.groupby(keys, as_index=False).ref_s.median()
    m = df.merge(ref, on=keys, how="inner")
    m = m[m.guidance.isna()] if "guidance" in m else m
    m["wall_ratio"] = m.seconds_per_image / m.ref_s
    return m


def _repeat_range(df) -> tuple[np.ndarray, np.ndarray]:
    """Min and max of each record's per-repeat wall ratios (the median where none recorded)."""
    lo, hi = [], []
    for _, r in df.iterrows():
        reps = r.get("wall_ratio_repeats")
        ok = isinstance(reps, (list, np.ndarray)) and len(reps) > 0
        lo.append(min(reps) if ok else r.wall_ratio)
        hi.append(max(reps) if ok else r.wall_ratio)
    return np.asarray(lo, float), np.asarray(hi, float)


def plot_wall_vs_flops(df, out: Path, *, save: Saver = save) -> list[Path]:
    """Side-by-side ratios (``wall_ratio_per_call``: the cell's denoiser and the unpruned
    model timed interleaved on the same inputs) where records have them; older records fall
    back to :func:`wall_ratios` (cells timed minutes apart, so machine drift enters)."""
    import matplotlib.pyplot as plt

    side = "wall_ratio_per_call" in df and df.wall_ratio_per_call.notna().any()
    if side:
        m = df[df.wall_ratio_per_call.notna()].assign(wall_ratio=lambda d: d.wall_ratio_per_call)
        title = "Wall-clock vs FLOPs per call (interleaved, same inputs)"
        ylabel = "wall-clock per call / unpruned full-depth forward"
    else:
        m = wall_ratios(df)
        title = "Wall-clock vs FLOPs (cells timed separately)"
        ylabel = "wall-clock per image / full-depth cell"
    fig, ax = plt.subplots(figsize=(5.5, 5))
    flagged = (
        m.timing_unstable.fillna(False).astype(bool)
        if "timing_unstable" in m
        else np.zeros(len(m), dtype=bool)
    )
    if len(m):
        cmap = plt.get_cmap("tab10")
        steady = m[~flagged]
        for i, (pol, sub) in enumerate(sorted(steady.groupby("method"), key=lambda kv: kv[0])):
            lo, hi = _repeat_range(sub)
            ax.errorbar(
                sub.flop_ratio_per_call,
                sub.wall_ratio,
                yerr=[sub.wall_ratio - lo, hi - sub.wall_ratio],
                fmt="o",
                ms=5,
                color=cmap(i % 10),
                label=pol,
                capsize=2,
                elinewidth=0.8,
            )
        if flagged.any():
            bad = m[flagged]
            ax.scatter(
                bad.flop_ratio_per_call,
                bad.wall_ratio,
                marker="x",
                color="0.5",
                label="timing unstable (busy machine; not trusted)",
            )
    lim = max(1.05, float(_repeat_range(m)[1].max()) + 0.05) if len(m) else 1.05
    ax.plot([0, lim], [0, lim], "k--", lw=1, label="y = x (wall saves what FLOPs save)")
    ax.set_xlim(0, 1.05)
    ax.set_ylim(0, lim)
    ax.set_xlabel("FLOP ratio per call")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    legend_outside(ax, fontsize=7, title="error bars: min-max of the repeats", title_fontsize=7)
    ax.set_title(title, fontsize=10)
    paths = save(fig, out, "wall_vs_flops")
    plt.close(fig)
    return paths


def plot_fid_vs_total_flops(
    df, out: Path, floor: float | None = None, *, save: Saver = save
) -> list[Path]:
    """Every method on one axis: FID against total FLOPs (vs DDPM with all T steps), so fewer
    steps, exits, caching, pruning and their combinations meet at equal cost. Colour: the
    method; marker: the sampler run; black edge: pruned; the black line: the Pareto front over
    all of them; seeds averaged.
    Drawn when the grid mixes at least two methods."""
    import matplotlib.pyplot as plt

    if df.method.nunique() < 2:
        return []
    d = seed_means(df)
    colours, markers = styles(d)
    fig, ax = plt.subplots(figsize=(9, 5), layout="constrained")
    scatter_methods(ax, d, "flop_ratio_vs_reference", colours, markers)
    floor_line(ax, floor)
    ax.set_xscale("log")
    ax.set_xlabel("total FLOPs / DDPM (all T steps, full model)")
    h, lab = method_legend(colours, markers, bool((d.prune_ratio > 0).any()), floor)
    legend_outside(ax, h, lab, fontsize=7, title=LEGEND_TITLE, title_fontsize=7)
    ax.set_title(f"Every method at its total cost ({len(d)} cells)", fontsize=10)
    paths = save(fig, out, "fid_vs_total_flops")
    plt.close(fig)
    return paths
