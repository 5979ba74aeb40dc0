"""The pruning figure: FID against the pruned model's FLOPs per call, one line per pruning
recipe through its ratios, one panel per sampler run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.studies.plotting import Saver, plain, save

# The pruning recipe's cell fields and their short names in labels (bench.cell.Cell.prune_label).
_PRUNE_RECIPE = (
    ("prune_finetune_steps", "ft"),
    ("prune_lr", "lr"),
    ("prune_distill", "kd"),
    ("prune_distill_features", "fkd"),
    ("prune_rounds", "r"),
)


def prune_recipe(r) -> str:
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


def _pruned_cells(df):
    """The pruned cells without exits or caches, labelled with their recipe
    (``recipe_label``); None where they do not span two recipes or two ratios."""
    pruned = df[(df.prune_ratio > 0) & (df.policy == "full") & (df.cache == "none")].copy()
    if not len(pruned):
        return None
    pruned["recipe_label"] = [
        ("" if r.recipe == "full" else f"{r.recipe}: ") + prune_recipe(r)
        for _, r in pruned.iterrows()
    ]
    if pruned.recipe_label.nunique() < 2 and pruned.prune_ratio.nunique() < 2:
        return None
    return pruned


def _draw_unpruned(ax, ref, longer) -> str:
    """The unpruned model (``ref``: its cells of the panel's run) as a star with 1, 1.15 and
    1.5 x its FID, and each longer-trained unpruned cell (``longer``) as a hollow star; the
    panel title's note on the unpruned FID ("" without ``ref``)."""
    import pandas as pd

    note = ""
    if len(ref):
        fid0 = float(ref.fid.min())
        note = f" (unpruned: {fid0:.2f})"
        ax.plot([1.0], [fid0], "k*", ms=10, label="unpruned")
        for k, ls in ((1.0, "-"), (1.15, "--"), (1.5, ":")):
            ax.axhline(k * fid0, color="grey", lw=0.8, ls=ls, label=f"{k}x unpruned")
    for _, r in longer.iterrows():
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
    return note


def _draw_recipes(ax, pruned, recipes: list[str]) -> None:
    """One line per recipe through its ratios (``pruned``: the panel run's cells; colour by
    the recipe's place in ``recipes``, shared by every panel), each point labelled with its
    prune ratio; train-small controls (``scratch``) dotted and hollow."""
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab20")
    for i, rec in enumerate(recipes):
        sub = pruned[pruned.recipe_label == rec]
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


def _shared_legend(axes) -> None:
    """One legend for every panel (each label once), right of the last panel, off the data."""
    handles = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    axes[-1].legend(
        handles.values(),
        handles.keys(),
        fontsize=7,
        title="recipe",
        loc="upper left",
        bbox_to_anchor=(1.02, 1),
    )


def plot_fid_vs_prune(df, out: Path, *, save: Saver = save) -> list[Path]:
    """Pruning recipes through their ratios: FID against FLOPs per call relative to the
    unpruned model, per sampler run (pruned cells without exits or caches, and the plain
    model). Drawn when the grid has pruned cells of two or more recipes or ratios."""
    import matplotlib.pyplot as plt

    pruned = _pruned_cells(df)
    if pruned is None:
        return []
    is_plain = plain(df)
    runs = sorted(pruned.run.unique())
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.6), squeeze=False)
    recipes = sorted(pruned.recipe_label.unique())
    # The unpruned model fine-tuned as long as the pruned ones (`full-ft`): the extra training.
    longer = df[(df.recipe == "full-ft") & (df.policy == "full") & (df.prune_ratio == 0)]
    longer = longer[longer.cache == "none"]
    for ax, run in zip(axes[0], runs, strict=True):
        ref = df[is_plain & (df.run == run)]
        title = run + _draw_unpruned(ax, ref, longer[longer.run == run])
        _draw_recipes(ax, pruned[pruned.run == run], recipes)
        ax.set_xlabel("FLOPs per call / unpruned (labels: prune ratio)")
        ax.set_ylabel("FID (lower is better)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    _shared_legend(axes[0])
    paths = save(fig, out, "fid_vs_prune")
    plt.close(fig)
    return paths
