"""Plots of a grid sweep (matplotlib; PNG + SVG).

``python -m bench.report`` reads the records of ``python -m bench.grid`` (``results/grid``) and
writes to ``results/grid/report/``:

- ``fid_vs_flops``: FID against the total FLOP ratio (vs DDPM with all T steps on the full
  model; log scale), coloured by sampler/steps, and against the FLOP ratio per denoiser call,
  coloured by exit policy; each panel with its Pareto front (no cell is cheaper *and* better);
- ``wall_vs_flops``: each cell's wall-clock per denoiser call relative to the unpruned model's
  plain forward, timed interleaved on the same captured inputs, against the FLOP ratio per
  call, with the y = x line (the gap above it is the executor's overhead);
- ``exit_heatmap``: share of samples exiting at each block per timestep bin, one panel per
  exit policy (the cell with the most sampling steps of that policy);
- ``fid_vs_guidance``: FID against the guidance scale (sweeps with two or more scales);
- ``fid_vs_nfe``: FID against the number of denoiser calls, one line per solver (sampler,
  order, spacing) of the full unpruned model, with DDPM at all T steps as the reference line;
  left the samplers on their default grids, right those with a chosen spacing
  (``bench/sweeps/samplers.toml``);
- ``fid_vs_prune``: FID against the pruned model's FLOPs per call (vs unpruned), one line per
  pruning recipe (criterion, fine-tune budget, distillation, rounds) through its ratios, the
  train-small control hollow, with the unpruned model's FID and 1.15x / 1.5x of it
  (``bench/sweeps/pruning.toml``); one panel per sampler run;
- ``samples``: the saved sample grid of chosen cells (``--cells``: substrings of cell labels;
  default: the best FID of each policy).

Nonfinite or failed cells are never plotted (they are listed in ``summary.md``).
"""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import numpy as np

from bench.cache import atomic_write_bytes
from bench.cli import make_parser

__all__ = ["load_table", "main", "pareto_front"]

log = logging.getLogger(__name__)


def load_table(grid_dir: Path):
    """The grid's records as a DataFrame (from ``records/``, so a running sweep can be read)."""
    import pandas as pd

    recs = []
    for path in sorted((grid_dir / "records").glob("*.json")):
        try:
            recs.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            log.warning("skipping unreadable record %s (%s)", path, e)
    if not recs:
        raise ValueError(f"no records under {grid_dir / 'records'}; run python -m bench.grid")
    df = pd.DataFrame(recs)
    from bench.cell import solver_label

    opts = ["order", "spacing", "end", "taylor_3m", "lower_order_final"]
    for col in opts:  # records from before these cell fields
        df[col] = df[col] if col in df else None
    df["solver"] = [
        solver_label(r["sampler"], **{k: None if pd.isna(r[k]) else r[k] for k in opts})
        for _, r in df.iterrows()
    ]
    df["run"] = df.solver + "-" + df.steps.astype(str)
    # Records written before a Cell field existed hold that field's default.
    df["reference"] = df["reference"].fillna("train") if "reference" in df else "train"
    df["cache"] = df["cache"].fillna("none") if "cache" in df else "none"
    df["method"] = [_method(r) for _, r in df.iterrows()]
    df["accel"] = [_method(r, pruning=False) for _, r in df.iterrows()]
    return df


def _plain(df):
    """Rows of the plain model: full recipe, no pruning, no exits, no cache."""
    no_cache = (df["cache"].fillna("none") == "none") if "cache" in df else True
    return (df.policy == "full") & (df.prune_ratio == 0) & (df.recipe == "full") & no_cache


def _method(r, pruning: bool = True) -> str:
    """The acceleration a cell combines: pruning, an exit policy, a cache (or "full");
    ``pruning=False`` leaves pruning out (figures mark it apart)."""
    parts = [f"prune{r.prune_ratio:g}"] if r.prune_ratio and pruning else []
    parts += [] if r.policy == "full" else [r.policy]
    parts += [] if r.cache == "none" else [r.cache]
    return "+".join(parts) or "full"


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the points not dominated in (lower x, lower y), sorted by x."""
    order = np.lexsort((y, x))
    front, best = [], np.inf
    for i in order:
        if y[i] < best:
            front.append(i)
            best = y[i]
    return np.asarray(front, dtype=int)


def _save(fig, out: Path, name: str) -> list[Path]:
    paths = []
    for ext in ("png", "svg"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=130, bbox_inches="tight")
        path = out / f"{name}.{ext}"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


_MARKERS = "os^Dv<>pPX*h"
LEGEND_TITLE = "colour: exit policy / cache\nmarker: sampler and steps"


def seed_means(df):
    """One row per cell up to its seed (same label): FID and KID averaged over the seeds, with
    ``fid_sd`` (0 for a single seed) and ``seeds``; the other columns from the first seed."""
    g = df.groupby("label", sort=False)
    first = g.head(1).set_index("label")
    first["fid"] = g.fid.mean()
    first["fid_sd"] = g.fid.std(ddof=1).fillna(0.0)
    first["kid"] = g.kid.mean()
    first["seeds"] = g.seed.nunique()
    return first.reset_index()


def _legend_outside(ax, handles=None, labels=None, **kw) -> None:
    """The legend to the right of ``ax``, off the data."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, **kw)


def _floor_line(ax, floor: float | None) -> list:
    if floor is None:
        return []
    return [ax.axhline(floor, color="0.35", ls=":", lw=1.2, label=f"FID floor {floor:.2f}")]


def _scatter_methods(ax, df, x: str, colours: dict, markers: dict) -> None:
    """Colour: the exit policy and cache (``accel``); marker: the sampler run; black edge:
    pruned; error bars: the sd over seeds; the black step line: the Pareto front."""
    for (method, run), sub in df.groupby(["accel", "run"]):
        pruned = sub.prune_ratio > 0
        for mask, edge in ((~pruned, "none"), (pruned, "k")):
            part = sub[mask]
            if not len(part):
                continue
            ax.scatter(
                part[x],
                part.fid,
                s=34,
                color=colours[method],
                marker=markers[run],
                edgecolors=edge,
                linewidths=1.3,
                alpha=0.9,
                zorder=3,
            )
        spread = sub[sub.seeds > 1]
        if len(spread):
            ax.errorbar(
                spread[x],
                spread.fid,
                yerr=spread.fid_sd,
                fmt="none",
                ecolor=colours[method],
                elinewidth=1,
                capsize=2,
                zorder=2,
            )
    front = pareto_front(df[x].to_numpy(float), df.fid.to_numpy(float))
    f = df.iloc[front]
    ax.step(f[x], f.fid, where="post", color="k", lw=1, alpha=0.7, zorder=1)
    ax.set_ylabel("FID (lower is better)")
    ax.grid(alpha=0.3, which="both")


def _method_legend(colours: dict, markers: dict, pruned: bool, floor: float | None) -> tuple:
    """Handles and labels: one colour per exit policy / cache, one grey marker per sampler
    run, the pruned edge, the Pareto front and the floor."""
    from matplotlib.lines import Line2D

    h, lab = [], []
    for m, c in colours.items():
        h.append(Line2D([], [], marker="o", ls="", color=c, ms=6))
        lab.append(m)
    for r, mk in markers.items():
        h.append(Line2D([], [], marker=mk, ls="", color="0.5", ms=6))
        lab.append(r)
    if pruned:
        h.append(Line2D([], [], marker="o", ls="", mfc="0.85", mec="k", mew=1.3, ms=6))
        lab.append("pruned model (black edge)")
    h.append(Line2D([], [], color="k", lw=1))
    lab.append("Pareto front")
    if floor is not None:
        h.append(Line2D([], [], color="0.35", ls=":", lw=1.2))
        lab.append(f"FID floor {floor:.2f} (held-out real images)")
    return h, lab


def _styles(df) -> tuple[dict, dict]:
    import matplotlib.pyplot as plt

    methods = sorted(df.accel.unique(), key=lambda m: (m != "full", m))
    # Grey is the markers' colour in the legend: no method gets it.
    if len(methods) <= 9:
        palette = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 7]
    else:
        palette = [c for i, c in enumerate(plt.get_cmap("tab20").colors) if i not in (14, 15)]
    runs = sorted(df.run.unique())
    colours = {m: palette[i % len(palette)] for i, m in enumerate(methods)}
    markers = {r: _MARKERS[i % len(_MARKERS)] for i, r in enumerate(runs)}
    return colours, markers


def plot_fid_vs_flops(df, out: Path, floor: float | None = None) -> list[Path]:
    """Two views of every cell, each with its Pareto front: total FLOPs (the sampler's step
    count included) and FLOPs per denoiser call. Both panels show the method (colour) and the
    sampler run (marker); seeds of one cell are averaged, with their sd as error bars."""
    import matplotlib.pyplot as plt

    d = seed_means(df)
    colours, markers = _styles(d)
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.8), layout="constrained")
    _scatter_methods(a, d, "flop_ratio_vs_reference", colours, markers)
    a.set_xscale("log")
    a.set_xlabel("total FLOPs / DDPM (all T steps, full model)")
    a.set_title("at total cost (steps included)", fontsize=10)
    _scatter_methods(b, d, "flop_ratio_per_call", colours, markers)
    b.set_xlabel("FLOPs per denoiser call / full unpruned model")
    b.set_title("per denoiser call", fontsize=10)
    for ax in (a, b):
        _floor_line(ax, floor)
    h, lab = _method_legend(colours, markers, bool((d.prune_ratio > 0).any()), floor)
    _legend_outside(b, h, lab, fontsize=7, title=LEGEND_TITLE, title_fontsize=7)
    ext = ", ".join(sorted(df.extractor.dropna().unique()))
    seeds = int(d.seeds.max())
    spread = f"; error bars: sd over {seeds} seeds" if seeds > 1 else ""
    fig.suptitle(f"FID vs FLOPs ({len(d)} cells; features: {ext}{spread})", fontsize=10)
    paths = _save(fig, out, "fid_vs_flops")
    plt.close(fig)
    return paths


def wall_ratios(df):
    """Each cell's seconds per image over the matching full-depth, unpruned cell's (same
    model, sampler, steps, guidance, device); cells without such a reference are dropped."""
    ref = df[_plain(df)]
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


def plot_wall_vs_flops(df, out: Path) -> list[Path]:
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
    _legend_outside(ax, fontsize=7, title="error bars: min-max of the repeats", title_fontsize=7)
    ax.set_title(title, fontsize=10)
    paths = _save(fig, out, "wall_vs_flops")
    plt.close(fig)
    return paths


def plot_exit_heatmaps(df, out: Path) -> list[Path]:
    exits = df[(df.policy != "full") & df.exit_histogram.notna()]
    if not len(exits):
        return []
    from adaptive.policies import POLICIES

    # Per policy: the unpruned cell with the most steps (the finest view over t), seed 0 first;
    # panels in the registry's order, so every report lays them out alike.
    chosen = exits.sort_values(["prune_ratio", "steps", "seed"], ascending=[True, False, True])
    chosen = chosen.groupby("policy", sort=False).head(1)
    order = {name: i for i, name in enumerate(POLICIES)}
    chosen = chosen.sort_values("policy", key=lambda s: s.map(order).fillna(len(order)))
    panels = [
        (
            r.exit_histogram,
            f"{r.policy} ({r.run})\nFID {r.fid:.2f}, FLOPs {r.flop_ratio_per_call:.2f}",
        )
        for _, r in chosen.iterrows()
    ]
    return heatmap_grid(panels, out, "exit_heatmap")


def heatmap_grid(panels: list[tuple[dict, str]], out: Path, name: str) -> list[Path]:
    """One panel per (exit histogram of a record, title): the share of samples exiting after
    each block (1-based: blocks run) per timestep bin; a shared colour bar."""
    import matplotlib.pyplot as plt

    n = len(panels)
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.4 * cols, 3.2 * rows), squeeze=False, layout="constrained"
    )
    for ax, (h, title) in zip(axes.flat, panels, strict=False):
        counts = np.asarray(h["counts"], float)  # (t bins, blocks)
        share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        edges = h["t_edges"]
        im = ax.imshow(
            share.T,
            origin="lower",
            aspect="auto",
            cmap="viridis",
            vmin=0,
            vmax=1,
            extent=(edges[0], edges[-1], 0.5, counts.shape[1] + 0.5),
        )
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("timestep t")
        ax.set_ylabel("blocks run (exit after block)")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.colorbar(im, ax=axes, shrink=0.8, label="share of samples")
    paths = _save(fig, out, name)
    plt.close(fig)
    return paths


SAMPLE_TILES = 6  # the samples figure shows the first 6 x 6 samples of each chosen cell


def _sample_run(ok):
    """The sampler run (sampler and steps) holding the most policies, FID breaking ties: the
    cells compared in the samples figure share it and their seed, so every panel starts from
    the same initial noise and differs only by what the policy does."""
    counts = ok.groupby("run").agg(policies=("policy", "nunique"), fid=("fid", "mean"))
    return counts.sort_values(["policies", "fid"], ascending=[False, True]).index[0]


def _tiles(img, img_size: int, n: int):
    """The top-left ``n`` x ``n`` samples of a saved grid (:func:`bench.sampling.save_grid`)."""
    from bench.sampling import GRID_PADDING, GRID_SCALE

    side = (n * (img_size + GRID_PADDING) + GRID_PADDING) * GRID_SCALE
    return img.crop((0, 0, min(side, img.width), min(side, img.height)))


def _real_tiles(dataset: str, n: int, data=None):
    """``n`` x ``n`` real training images as one grid image, or None where the data set
    cannot be read here (it is then left out, with a log line)."""
    import torch
    from PIL import Image
    from torchvision.utils import make_grid

    from bench.data import DatasetError, as_tensors, data_source

    try:
        images, _ = as_tensors(data_source(data).load(dataset, "train"))
    except (DatasetError, OSError, ValueError) as e:
        log.info("no real-image panel: %s", e)
        return None
    from bench.sampling import GRID_PADDING

    g = torch.Generator().manual_seed(0)
    pick = images[torch.randperm(len(images), generator=g)[: n * n]]
    grid = make_grid(pick.clamp(-1, 1).add(1).div(2), nrow=n, padding=GRID_PADDING, pad_value=1.0)
    arr = (grid[0].numpy() * 255).round().astype("uint8")
    return Image.fromarray(arr)


def plot_samples(df, grid_dir: Path, out: Path, patterns: list[str] | None, data=None):
    """The first 6 x 6 samples of chosen cells beside 36 real training images, drawn large
    (nearest-neighbour, one sample is many pixels). Default choice: in the sampler run with
    the most policies, the best FID of each policy at the first seed, so panels share their
    initial noise; ``patterns`` picks cells by label instead."""
    import matplotlib.pyplot as plt
    from PIL import Image

    from bench.data import dataset_info

    ok = df[~df.nonfinite.astype(bool) & df.fid.notna()]
    if patterns:
        chosen = _matching(ok, patterns)
        note = "chosen cells"
    else:
        run = _sample_run(ok)
        pool = ok[(ok.run == run) & (ok.seed == ok[ok.run == run].seed.min())]
        chosen = pool.loc[pool.groupby("method").fid.idxmin()].sort_values("fid")
        note = f"{run}, seed {int(pool.seed.iloc[0])}: the same initial noise in every panel"
    items = []
    for _, r in chosen.iterrows():
        path = grid_dir / "samples" / f"{r.key}.png"
        if path.exists():
            size = dataset_info(r.dataset).img_size
            items.append(
                (
                    f"{r.label}\nFID {r.fid:.2f}, FLOPs/call {r.flop_ratio_per_call:.2f}",
                    _tiles(Image.open(path), size, SAMPLE_TILES),
                )
            )
    if not items:
        return []
    real = _real_tiles(chosen.dataset.iloc[0], SAMPLE_TILES, data)
    if real is not None:
        items.insert(0, ("real training images", real))
    cols = min(4, len(items))
    rows = -(-len(items) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.3 * cols, 3.6 * rows), squeeze=False, layout="constrained"
    )
    for ax, (title, img) in zip(axes.flat, items, strict=False):
        ax.imshow(img, cmap="gray", interpolation="nearest", vmin=0, vmax=255)
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    for ax in list(axes.flat)[len(items) :]:
        ax.axis("off")
    fig.suptitle(f"First {SAMPLE_TILES * SAMPLE_TILES} samples ({note})", fontsize=9)
    paths = _save(fig, out, "samples")
    plt.close(fig)
    return paths


def _matching(df, patterns: list[str]):
    """The cells whose label contains any of ``patterns`` (a ValueError if none does)."""
    chosen = df[df.label.apply(lambda s: any(p in s for p in patterns))]
    if not len(chosen):
        raise ValueError(
            f"no cell label contains any of {patterns}; labels: {sorted(df.label)[:8]}..."
        )
    return chosen


def plot_fid_vs_guidance(df, out: Path) -> list[Path]:
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
    _legend_outside(axes[0][-1], *axes[0][0].get_legend_handles_labels(), fontsize=7)
    paths = _save(fig, out, "fid_vs_guidance")
    plt.close(fig)
    return paths


def plot_fid_vs_nfe(df, out: Path) -> list[Path]:
    """FID against NFE per solver (full unpruned model, no guidance), log-log."""
    import matplotlib.pyplot as plt

    plain = _plain(df)
    if "guidance" in df:
        plain &= df.guidance.isna()
    d = df[plain]
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
    paths = _save(fig, out, "fid_vs_nfe")
    plt.close(fig)
    return paths


def plot_fid_vs_total_flops(df, out: Path, floor: float | None = None) -> list[Path]:
    """Every method on one axis: FID against total FLOPs (vs DDPM with all T steps), so fewer
    steps, exits, caching, pruning and their combinations meet at equal cost. Colour: the
    method; marker: the sampler run; black edge: pruned; the black line: the Pareto front over
    all of them; seeds averaged.
    Drawn when the grid mixes at least two methods."""
    import matplotlib.pyplot as plt

    if df.method.nunique() < 2:
        return []
    d = seed_means(df)
    colours, markers = _styles(d)
    fig, ax = plt.subplots(figsize=(9, 5), layout="constrained")
    _scatter_methods(ax, d, "flop_ratio_vs_reference", colours, markers)
    _floor_line(ax, floor)
    ax.set_xscale("log")
    ax.set_xlabel("total FLOPs / DDPM (all T steps, full model)")
    h, lab = _method_legend(colours, markers, bool((d.prune_ratio > 0).any()), floor)
    _legend_outside(ax, h, lab, fontsize=7, title=LEGEND_TITLE, title_fontsize=7)
    ax.set_title(f"Every method at its total cost ({len(d)} cells)", fontsize=10)
    paths = _save(fig, out, "fid_vs_total_flops")
    plt.close(fig)
    return paths


# The pruning recipe's cell fields and their short names in labels (bench.cell.Cell.prune_label).
_PRUNE_RECIPE = (
    ("prune_finetune_steps", "ft"),
    ("prune_lr", "lr"),
    ("prune_distill", "kd"),
    ("prune_distill_features", "fkd"),
    ("prune_rounds", "r"),
)


def _prune_recipe(r) -> str:
    """A pruned cell's recipe without its ratio, e.g. ``magnitude ft2000 kd1`` (``default``
    where every field is unset). A field set to ``PruneConfig``'s default is left out: it
    names the same model as leaving it unset."""
    import pandas as pd

    from bench.cell import PRUNE_FIELDS
    from bench.prune import PruneConfig

    defaults = PruneConfig()

    parts = (
        []
        if r.get("prune_importance", "diff-pruning") == "diff-pruning"
        else [r["prune_importance"]]
    )
    for col, short in _PRUNE_RECIPE:
        v = r.get(col)
        if v is not None and not pd.isna(v) and v != getattr(defaults, PRUNE_FIELDS[col]):
            parts.append(f"{short}{v:g}")
    scratch = r.get("prune_scratch", False)  # NaN in records from before the field
    if isinstance(scratch, (bool, np.bool_)) and scratch:
        parts.append("scratch")
    teacher = r.get("prune_teacher")
    if isinstance(teacher, str):
        parts.append(f"T{teacher[:8]}")
    return " ".join(parts) or f"default (ft{defaults.finetune_steps})"


def plot_fid_vs_prune(df, out: Path) -> list[Path]:
    """Pruning recipes through their ratios: FID against FLOPs per call relative to the
    unpruned model, per sampler run (pruned cells without exits or caches, and the plain
    model). Drawn when the grid has pruned cells of two or more recipes or ratios."""
    import matplotlib.pyplot as plt
    import pandas as pd

    plain = _plain(df)
    pruned = df[(df.prune_ratio > 0) & (df.policy == "full") & (df.cache == "none")].copy()
    if not len(pruned):
        return []
    pruned["recipe_label"] = [
        ("" if r.recipe == "full" else f"{r.recipe}: ") + _prune_recipe(r)
        for _, r in pruned.iterrows()
    ]
    if pruned.recipe_label.nunique() < 2 and pruned.prune_ratio.nunique() < 2:
        return []
    runs = sorted(pruned.run.unique())
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.6), squeeze=False)
    recipes = sorted(pruned.recipe_label.unique())
    cmap = plt.get_cmap("tab20")
    # The unpruned model fine-tuned as long as the pruned ones (`full-ft`): the extra training.
    longer = df[(df.recipe == "full-ft") & (df.policy == "full") & (df.prune_ratio == 0)]
    longer = longer[longer.cache == "none"]
    for ax, run in zip(axes[0], runs, strict=True):
        ref = df[plain & (df.run == run)]
        title = run
        if len(ref):
            fid0 = float(ref.fid.min())
            title += f" (unpruned: {fid0:.2f})"
            ax.plot([1.0], [fid0], "k*", ms=10, label="unpruned")
            for k, ls in ((1.0, "-"), (1.15, "--"), (1.5, ":")):
                ax.axhline(k * fid0, color="grey", lw=0.8, ls=ls, label=f"{k}x unpruned")
        for _, r in longer[longer.run == run].iterrows():
            ax.plot([1.0], [r.fid], "k*", mfc="none", ms=10, label="unpruned, trained longer")
            if not pd.isna(r.get("finetune_steps")):
                ax.annotate(
                    f"+{r.finetune_steps:g}",
                    (1.0, r.fid),
                    textcoords="offset points",
                    xytext=(-8, 5),
                    ha="right",
                    fontsize=6,
                )
        for i, rec in enumerate(recipes):
            sub = pruned[(pruned.run == run) & (pruned.recipe_label == rec)]
            sub = sub.sort_values("flop_ratio_per_call")
            if not len(sub):
                continue
            scratch = "scratch" in rec
            ax.plot(
                sub.flop_ratio_per_call,
                sub.fid,
                marker="o",
                ls=":" if scratch else "-",
                color=cmap(i % 20),
                mfc="none" if scratch else cmap(i % 20),
                label=rec,
            )
            for _, r in sub.iterrows():
                ax.annotate(
                    f"{r.prune_ratio:g}",
                    (r.flop_ratio_per_call, r.fid),
                    textcoords="offset points",
                    xytext=(4, 3),
                    fontsize=6,
                )
        ax.set_xlabel("FLOPs per call / unpruned (labels: prune ratio)")
        ax.set_ylabel("FID (lower is better)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    handles = {}
    for ax in axes[0]:  # one legend for every panel, outside the data
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    axes[0][-1].legend(
        handles.values(),
        handles.keys(),
        fontsize=7,
        title="recipe",
        loc="upper left",
        bbox_to_anchor=(1.02, 1),
    )
    paths = _save(fig, out, "fid_vs_prune")
    plt.close(fig)
    return paths


def fid_floor_of(df, cache=None, data=None) -> float | None:
    """The FID floor (held-out real images against the training statistics,
    :func:`bench.metrics.fid_floor`) in the features the records were scored with, when they
    share one data set, one extractor and the training split as reference; else None."""
    from bench.cache import ArtifactCache, config_hash
    from bench.metrics import CNNExtractorConfig, fid_floor, get_extractor

    if df.dataset.nunique() != 1 or df.extractor.nunique() != 1 or (df.reference != "train").any():
        return None
    dataset, name = df.dataset.iloc[0], df.extractor.iloc[0]
    cache = cache or ArtifactCache()
    cnn_key = config_hash(CNNExtractorConfig(dataset=dataset), kind="extractor")
    if name.startswith("cnn") and not cache.has("extractor", cnn_key):
        log.info("no FID floor: the records' extractor %s is not in %s", name, cache.root)
        return None  # a report never trains an extractor
    try:
        ext = get_extractor(name.split("-")[0], dataset, cache, data=data)
        if ext.name != name:  # another extractor than the records were scored with
            log.info("no FID floor: the cached extractor is %s, the records' %s", ext.name, name)
            return None
        return fid_floor(dataset, ext, cache, data)
    except (ValueError, OSError) as e:
        log.info("no FID floor: %s", e)
        return None


def make_report(
    grid_dir: Path, out: Path, cells: list[str] | None = None, cache=None
) -> list[Path]:
    """Every figure the records under ``grid_dir`` support, written to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    df = load_table(grid_dir)
    ok = df[~df.nonfinite.astype(bool) & df.fid.notna()].copy()
    if not len(ok):
        raise ValueError(f"every record under {grid_dir} is nonfinite; nothing to plot")
    if cells:
        _matching(ok, cells)  # a bad --cells fails before any figure is written
    floor = fid_floor_of(ok, cache)
    paths = plot_fid_vs_flops(ok, out, floor)
    paths += plot_wall_vs_flops(ok, out)
    paths += plot_exit_heatmaps(ok, out)
    paths += plot_fid_vs_guidance(ok, out)
    paths += plot_fid_vs_nfe(ok, out)
    paths += plot_fid_vs_total_flops(ok, out, floor)
    paths += plot_fid_vs_prune(ok, out)
    paths += plot_samples(df, grid_dir, out, cells)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = make_parser("bench.report", __doc__)
    p.add_argument("--grid", type=Path, default=Path("results/grid"), help="a grid's --out folder")
    p.add_argument("--out", type=Path, default=None, help="figure folder (default: GRID/report)")
    p.add_argument(
        "--cells",
        nargs="+",
        default=None,
        help="label substrings of the cells whose samples to show "
        "(default: the best FID of each policy)",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help="artifact cache holding the feature extractor, for the FID floor "
        "(default: <repo>/.cache)",
    )
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        from bench.cache import ArtifactCache

        cache = ArtifactCache(a.cache_dir)
        paths = make_report(a.grid, a.out or a.grid / "report", a.cells, cache)
    except ValueError as e:
        p.error(str(e))
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
