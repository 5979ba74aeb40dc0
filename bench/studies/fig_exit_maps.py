"""The exit heatmap figure: where samples leave the network per timestep, one panel per exit
policy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bench.studies.plotting import heatmap_grid


def plot_exit_heatmaps(
    df, out: Path, *, grid: Callable[..., list[Path]] = heatmap_grid
) -> list[Path]:
    """Per exit policy, the exit heatmap of its unpruned cell with the most steps, titled
    with its FID and FLOP ratio; panels in :data:`adaptive.policies.POLICIES` order, drawn by
    ``grid`` (:func:`~bench.studies.plotting.heatmap_grid`)."""
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
    return grid(panels, out, "exit_heatmap")
