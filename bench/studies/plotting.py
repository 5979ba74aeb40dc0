"""Helpers the report figures share: the records as a table, the plain model's rows, the
Pareto front, saving (PNG + SVG), seed means, method colours and markers, legends, the FID
floor and the exit heatmap grid."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.cache import atomic_write_bytes
from bench.intervals import distinguishable

log = logging.getLogger(__name__)

# How a figure writes itself: (figure, folder, file stem) -> the files written.
Saver = Callable[..., list[Path]]


def load_table(grid_dir: Path):
    """The grid's records as a DataFrame (from ``records/``, so a running sweep can be read)."""
    import pandas as pd

    from bench.store import load_records

    recs = load_records(grid_dir)  # validated: a bad record is named and skipped
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


def plain(df):
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


def save(fig, out: Path, name: str) -> list[Path]:
    """``fig`` as ``out/name.png`` and ``out/name.svg`` (written atomically)."""
    paths = []
    for ext in ("png", "svg"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=130, bbox_inches="tight")
        path = out / f"{name}.{ext}"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


def write_png(fig, path: Path, dpi: int = 130) -> Path:
    """``fig`` as one PNG at ``path`` (written atomically), then closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


_MARKERS = "os^Dv<>pPX*h"
ERROR_BARS = "1 sd (over seeds where a cell has several, else FID's bootstrap sd)"
LEGEND_TITLE = "colour: exit policy / cache\nmarker: sampler and steps"


def seed_means(df):
    """One row per cell up to its seed (same label): FID and KID averaged over the seeds, with
    ``fid_sd`` and ``seeds``; the other columns from the first seed. ``fid_sd`` is the sd over
    the seeds where a cell has several, else the record's bootstrap sd over its samples
    (``fid_boot_sd``, :mod:`bench.intervals`), else 0."""
    g = df.groupby("label", sort=False)
    first = g.head(1).set_index("label")
    first["fid"] = g.fid.mean()
    first["fid_sd"] = g.fid.std(ddof=1)
    if "fid_boot_sd" in df:
        first["fid_sd"] = first.fid_sd.fillna(g.fid_boot_sd.mean())
    first["fid_sd"] = first.fid_sd.fillna(0.0)
    first["kid"] = g.kid.mean()
    first["seeds"] = g.seed.nunique()
    return first.reset_index()


def within_noise_of_cheaper(front) -> np.ndarray:
    """For each point of a Pareto front (sorted by cost), whether its FID is within noise of
    the previous (cheaper) point's (:func:`bench.intervals.distinguishable` on ``fid_sd``)."""
    fid, sd = front.fid.to_numpy(float), front.fid_sd.to_numpy(float)
    return np.asarray(
        [
            i > 0 and not distinguishable(fid[i], sd[i], fid[i - 1], sd[i - 1])
            for i in range(len(fid))
        ],
        dtype=bool,
    )


def legend_outside(ax, handles=None, labels=None, **kw) -> None:
    """The legend to the right of ``ax``, off the data."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, **kw)


def floor_line(ax, floor: float | None) -> list:
    """A dotted line at the FID ``floor`` on ``ax``: a list of its handle (empty for None)."""
    if floor is None:
        return []
    return [ax.axhline(floor, color="0.35", ls=":", lw=1.2, label=f"FID floor {floor:.2f}")]


def scatter_methods(ax, df, x: str, colours: dict, markers: dict) -> None:
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
        spread = sub[sub.fid_sd > 0]
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
    tied = within_noise_of_cheaper(f)
    if tied.any():  # a front point whose gain over the cheaper one is not a finding
        ax.scatter(f[x][tied], f.fid[tied], s=170, facecolors="none", edgecolors="0.45",
                   linewidths=1, ls="--", zorder=4)  # fmt: skip
    ax.set_ylabel("FID (lower is better)")
    ax.grid(alpha=0.3, which="both")


def method_legend(colours: dict, markers: dict, pruned: bool, floor: float | None) -> tuple:
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
    h.append(Line2D([], [], marker="o", ls="", mfc="none", mec="0.45", ms=11))
    lab.append("front point within noise of the cheaper one")
    if floor is not None:
        h.append(Line2D([], [], color="0.35", ls=":", lw=1.2))
        lab.append(f"FID floor {floor:.2f} (held-out real images)")
    return h, lab


def styles(df) -> tuple[dict, dict]:
    """Colours per method (``accel``; ``full`` first, none grey: the legend's marker colour)
    and markers per sampler run (``run``) of ``df``."""
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


def heatmap_grid(
    panels: list[tuple[dict, str]], out: Path, name: str, *, save: Saver = save
) -> list[Path]:
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
    paths = save(fig, out, name)
    plt.close(fig)
    return paths
