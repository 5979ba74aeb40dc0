"""The paired-fidelity figure: how far each compressed cell's samples are from the uncompressed
pipeline's samples from the same initial noise (:mod:`bench.paired`), against total FLOPs."""

from __future__ import annotations

import math
from pathlib import Path

from bench.studies.plotting import LEGEND_TITLE, Saver, legend_outside, save, styles


def paired_means(df):
    """One row per cell up to its seed: PSNR / SSIM averaged over the seeds (``psnr_sd``: their
    sd over seeds, 0 for one seed); cells identical to their reference (infinite PSNR: the
    reference itself, e.g. the plain model at any step count) and unpaired cells left out."""
    d = df[df.psnr.notna()] if "psnr" in df else df.iloc[:0]
    d = d[[math.isfinite(v) for v in d.psnr]] if len(d) else d
    if not len(d):
        return d
    g = d.groupby("label", sort=False)
    first = g.head(1).set_index("label")
    first["psnr"] = g.psnr.mean()
    first["psnr_sd"] = g.psnr.std(ddof=1).fillna(0.0)
    first["ssim"] = g.ssim.mean()
    return first.reset_index()


def plot_psnr_vs_total_flops(df, out: Path, *, save: Saver = save) -> list[Path]:
    """Paired PSNR (higher: closer to the uncompressed samples) against total FLOPs, one line
    per strategy (exit policy / cache, pruned ones apart) through its cells by cost; marker:
    the sampler run; error bars: sd over seeds where a cell has several. Beside
    ``fid_vs_total_flops``: PSNR has a fraction of FID's seed noise. Drawn when the records
    carry paired metrics of at least one compressed cell."""
    import matplotlib.pyplot as plt

    d = paired_means(df)
    if not len(d):
        return []
    colours, markers = styles(d)
    fig, ax = plt.subplots(figsize=(9, 5), layout="constrained")
    for method, sub in d.groupby("method", sort=False):
        sub = sub.sort_values("flop_ratio_vs_reference")
        colour = colours[sub.accel.iloc[0]]
        pruned = bool((sub.prune_ratio > 0).any())
        ax.plot(sub.flop_ratio_vs_reference, sub.psnr, color=colour, lw=1,
                ls="--" if pruned else "-", label=method)  # fmt: skip
        edge = "k" if pruned else "none"
        for run, part in sub.groupby("run"):
            x, y = part.flop_ratio_vs_reference, part.psnr
            ax.scatter(x, y, color=colour, marker=markers[run], edgecolors=edge, zorder=3)
        spread = sub[sub.psnr_sd > 0]
        if len(spread):
            ax.errorbar(spread.flop_ratio_vs_reference, spread.psnr, yerr=spread.psnr_sd,
                        fmt="none", ecolor=colour, capsize=2)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("total FLOPs / DDPM (all T steps, full model)")
    ax.set_ylabel("paired PSNR vs the uncompressed pipeline, dB (higher is closer)")
    ax.grid(alpha=0.3, which="both")
    legend_outside(ax, fontsize=7, title=LEGEND_TITLE.split("\n")[0], title_fontsize=7)
    ax.set_title(
        f"How much each compression changes the samples ({len(d)} cells; dashed: pruned)",
        fontsize=10,
    )
    paths = save(fig, out, "psnr_vs_total_flops")
    plt.close(fig)
    return paths
