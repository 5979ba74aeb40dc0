"""``python -m pruning``: prune a cached checkpoint, fine-tune it, cache the recipe."""

from __future__ import annotations

import argparse
import logging
import sys

from adaptive.recipes import RECIPES
from bench.cache import ArtifactCache
from bench.cli import add_run_options
from bench.train import TrainConfig, resolve_device
from models import MODELS
from pruning.core import IMPORTANCES
from pruning.pipeline import PruneConfig, load_or_prune


def main(argv: list[str] | None = None) -> int:
    d = PruneConfig()
    p = argparse.ArgumentParser(
        prog="python -m pruning",
        description="Structured pruning (attention heads + MLP channels) of a cached U-ViT "
        "checkpoint with torch-pruning, then fine-tuning with the checkpoint's own recipe. The "
        "result is cached as base id + pruning history and rebuilt by replaying it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--ratio", type=float, default=d.ratio, help="fraction removed, in [0, 1)")
    p.add_argument("--importance", default=d.importance, choices=list(IMPORTANCES))
    p.add_argument("--recipe", default="full", choices=list(RECIPES), help="checkpoint to prune")
    p.add_argument("--model", default=TrainConfig().model, choices=list(MODELS))
    p.add_argument("--finetune-steps", type=int, default=d.finetune_steps)
    p.add_argument("--seed", type=int, default=d.seed)
    add_run_options(p)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        pc = PruneConfig(
            base=TrainConfig(recipe=a.recipe, model=a.model).normalised(),
            ratio=a.ratio,
            importance=a.importance,
            finetune_steps=a.finetune_steps,
            seed=a.seed,
        )
        device = resolve_device(a.device)
    except ValueError as e:
        p.error(str(e))
    pm = load_or_prune(pc, ArtifactCache(a.cache_dir), device, not a.no_progress)
    params = sum(q.numel() for q in pm.model.parameters())
    state = "cache hit" if pm.cached else "pruned and fine-tuned"
    print(
        f"{state}: {pc.key} (ratio {pc.ratio}, {pc.importance}, {params:,} params, "
        f"heads {sorted(set(pm.meta['num_heads'].values()))})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
