"""Prune a cached checkpoint, fine-tune it with its own recipe, and cache the result as a recipe.

The cached artifact holds the fine-tuned weights of the pruned model plus, in its metadata, the
base checkpoint id, ratio, criterion, torch-pruning's pruning history and head counts. Loading
rebuilds the architecture by replaying the history on a fresh base model, then loads the weights
(safetensors; nothing is unpickled).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from adaptive.recipes import get_recipe
from bench.cache import ArtifactCache, config_hash
from bench.data import as_tensors, load_dataset
from bench.train import TrainConfig, build_model, load_or_train, train
from models import UViT
from pruning.core import IMPORTANCES, prune, replay

__all__ = ["PruneConfig", "PrunedModel", "load_or_prune", "pruned_before_finetune"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneConfig:
    base: TrainConfig = field(default_factory=TrainConfig)
    ratio: float = 0.3
    importance: str = "diff-pruning"
    finetune_steps: int = 500
    finetune_lr: float = 5e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.ratio, (int, float)) or not 0 <= self.ratio < 1:
            raise ValueError(f"pruning ratio must be in [0, 1), got {self.ratio!r}")
        if self.importance not in IMPORTANCES:
            raise ValueError(
                f"unknown importance {self.importance!r}; valid choices: {', '.join(IMPORTANCES)}"
            )
        if self.finetune_steps < 0:
            raise ValueError(f"finetune_steps must be >= 0, got {self.finetune_steps}")

    @property
    def key(self) -> str:
        # The base's recipe revision is part of the base checkpoint's identity (its key), not
        # of its fields: include it, so a changed recipe never reuses an old pruned model.
        revision = get_recipe(self.base.recipe).revision
        return config_hash((self, revision) if revision else self, kind="pruned")


@dataclass
class PrunedModel:
    model: UViT  # pruned, fine-tuned EMA weights, eval mode
    config: PruneConfig
    meta: dict[str, Any]
    cached: bool

    @property
    def schedule(self):
        return self.config.base.make_schedule()


def _base_model(pc: PruneConfig, cache: ArtifactCache, device, progress: bool) -> UViT:
    """A fresh copy of the base checkpoint's EMA weights (the cached model is not mutated)."""
    base = load_or_train(pc.base, cache, device, progress=progress)
    model = build_model(base.config)
    model.load_state_dict(base.model.state_dict())
    return model.to(device)


def _prune(pc: PruneConfig, cache: ArtifactCache, device, progress: bool):
    model = _base_model(pc, cache, device, progress)
    data, _ = as_tensors(load_dataset(pc.base.dataset, "train"))
    ab = pc.base.make_schedule().alphas_cumprod
    return prune(
        model, pc.ratio, pc.importance, data=data.to(device), alphas_cumprod=ab, seed=pc.seed
    )


def load_or_prune(
    pc: PruneConfig,
    cache: ArtifactCache | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> PrunedModel:
    """The pruned + fine-tuned model for ``pc``, from the cache or built (and cached)."""
    cache = cache or ArtifactCache()

    def build() -> tuple[dict[str, Tensor], dict[str, Any]]:
        res = _prune(pc, cache, device, progress)
        ft_cfg = dataclasses.replace(
            pc.base, finetune_steps=pc.finetune_steps, finetune_lr=pc.finetune_lr
        )
        if pc.finetune_steps > 0:
            tensors, meta = train(ft_cfg, device, progress=progress, model=res.model)
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
    model = replay(_base_model(pc, cache, device, progress), meta["history"], meta["num_heads"])
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
