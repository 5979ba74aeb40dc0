"""Prune a cached checkpoint, fine-tune it with its own recipe, and cache the result as a recipe.

``python -m bench.prune --ratio 0.3 --importance diff-pruning [--recipe uem]`` builds (or finds
in the cache) one pruned model; the grid does the same for every cell with ``prune_ratio > 0``.

The cached artifact holds the fine-tuned weights of the pruned model plus, in its metadata, the
base checkpoint id, ratio, criterion, torch-pruning's pruning history and head counts. Loading
rebuilds the architecture by replaying the history on a fresh base model, then loads the weights
(safetensors; nothing is unpickled).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from adaptive.recipes import RECIPES
from bench.cache import ArtifactCache
from bench.cli import add_run_options
from bench.data import DataSource, as_tensors, data_source
from bench.devices import resolve_device
from bench.train import TrainConfig, build_model, load_or_train, train
from models import MODELS, UViT
from pruning import DEFAULT_IMPORTANCE, IMPORTANCES, check_prune, prune, replay

__all__ = ["PruneConfig", "PrunedModel", "load_or_prune", "main", "pruned_before_finetune"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneConfig:
    base: TrainConfig = field(default_factory=TrainConfig)
    ratio: float = 0.3
    importance: str = DEFAULT_IMPORTANCE
    finetune_steps: int = 500
    finetune_lr: float = 5e-4
    seed: int = 0

    def __post_init__(self) -> None:
        check_prune(self.ratio, self.importance)
        if self.finetune_steps < 0:
            raise ValueError(f"finetune_steps must be >= 0, got {self.finetune_steps}")

    @property
    def key(self) -> str:
        # The base's recipe revision is part of its identity: a changed recipe never reuses an
        # old pruned model (TrainConfig.identity holds the rule).
        return self.base.identity_hash(self, kind="pruned")


@dataclass
class PrunedModel:
    model: UViT  # pruned, fine-tuned EMA weights, eval mode
    config: PruneConfig
    meta: dict[str, Any]
    cached: bool

    @property
    def schedule(self):
        return self.config.base.make_schedule()


def _base_model(
    pc: PruneConfig, cache: ArtifactCache, device, progress: bool, data: DataSource | None = None
) -> UViT:
    """A fresh copy of the base checkpoint's EMA weights (the cached model is not mutated)."""
    base = load_or_train(pc.base, cache, device, data, progress=progress)
    model = build_model(base.config)
    model.load_state_dict(base.model.state_dict())
    return model.to(device)


def _prune(pc: PruneConfig, cache: ArtifactCache, device, progress: bool, data: DataSource):
    model = _base_model(pc, cache, device, progress, data)
    images, _ = as_tensors(data.load(pc.base.dataset, "train"))
    ab = pc.base.make_schedule().alphas_cumprod
    return prune(
        model, pc.ratio, pc.importance, data=images.to(device), alphas_cumprod=ab, seed=pc.seed
    )


def load_or_prune(
    pc: PruneConfig,
    cache: ArtifactCache | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    data: DataSource | None = None,
) -> PrunedModel:
    """The pruned + fine-tuned model for ``pc``, from the cache or built (and cached)."""
    cache = cache or ArtifactCache()
    data = data_source(data)

    def build() -> tuple[dict[str, Tensor], dict[str, Any]]:
        res = _prune(pc, cache, device, progress, data)
        ft_cfg = dataclasses.replace(
            pc.base, finetune_steps=pc.finetune_steps, finetune_lr=pc.finetune_lr
        )
        if pc.finetune_steps > 0:
            tensors, meta = train(ft_cfg, device, data, progress=progress, model=res.model)
            tensors = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
        else:
            tensors, meta = dict(res.model.state_dict()), {}
        meta.update(
            base=pc.base.key,
            prune=dataclasses.asdict(pc),
            history=res.history,
            num_heads=res.num_heads,
        )
        return tensors, meta

    tensors, meta, cached = cache.get_or_build("pruned", pc.key, build)
    base = _base_model(pc, cache, device, progress, data)
    model = replay(base, meta["history"], meta["num_heads"])
    model.load_state_dict(tensors)
    return PrunedModel(model.eval(), pc, meta, cached)


def pruned_before_finetune(
    pc: PruneConfig, cache: ArtifactCache | None = None, device: torch.device | str = "cpu"
) -> UViT:
    """The pruned model right after pruning (base weights, no fine-tune), by replaying the
    cached recipe."""
    pm = load_or_prune(pc, cache, device, progress=False)
    base = _base_model(pc, cache or ArtifactCache(), device, False)
    return replay(base, pm.meta["history"], pm.meta["num_heads"]).eval()


def main(argv: list[str] | None = None) -> int:
    d = PruneConfig()
    p = argparse.ArgumentParser(
        prog="python -m bench.prune",
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
    p.add_argument("--data-root", default=None, help="folder of a torchvision dataset")
    p.add_argument("--download", action="store_true", help="download the dataset (online)")
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
    data = DataSource(a.data_root, a.download)
    pm = load_or_prune(pc, ArtifactCache(a.cache_dir), device, not a.no_progress, data)
    params = sum(q.numel() for q in pm.model.parameters())
    state = "cache hit" if pm.cached else "pruned and fine-tuned"
    print(
        f"{state}: {pc.key} (ratio {pc.ratio}, {pc.importance}, {params:,} params, "
        f"heads {sorted(set(pm.meta['num_heads'].values()))})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
