"""The cached fits a step-level cache needs for a cell's model: TeaCache's / MagCache's fitted
options (:func:`load_or_fit`) and Learning-to-Cache's router (:func:`load_or_learn_router`),
each learned once per model, sampler, steps and guidance and kept as an artifact; and the
conditions a cell's samples carry (:func:`cell_conditions`), which the fits share with
:class:`bench.pipeline.Pipeline`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bench.cache import ArtifactCache, config_hash
from bench.cell import Cell
from bench.data import DatasetInfo
from bench.text import TextContext
from caching.l2c import train_router
from models import UViT
from samplers import VPSchedule

__all__ = ["L2C_TRAINING", "TEACACHE_FIT", "cell_conditions", "load_or_fit", "load_or_learn_router"]


def cell_conditions(
    cell: Cell, n: int, info: DatasetInfo, context: TextContext | None
) -> tuple[Tensor | None, Tensor | None]:
    """``n`` samples' conditions and target classes (see :meth:`Pipeline.conditions`)."""
    if cell.text is not None:
        if context is None:
            raise ValueError("a text cell needs its encoded prompts (bench.text.load_context)")
        return context.conditions(n, cell.prompts)
    if cell.guidance is None:
        return None, None
    labels = torch.arange(n) % info.num_classes
    return labels, labels


# The fits of needs_fit caches (TeaCache's rescaling, MagCache's magnitude ratios): full runs
# of this many samples in batches of this size. Part of the fit's artifact key.
TEACACHE_FIT = dict(n=64, batch=16, seed=0)


def load_or_fit(
    built: Any, cls: type, model_key: str, cache: ArtifactCache, conditions, inputs=None
) -> dict[str, Any]:
    """The fitted options of cache class ``cls`` (``cls.fitted``, and ``calls`` per run) for
    the cell's model, sampler, steps and guidance and the fit's ``inputs`` (the cell's options
    of ``cls.fit_inputs``): from the cache, or fitted and cached under ``cls.fit_kind``.
    ``built``: the pipeline's settled cell, model, schedule, sampler options and device."""
    inputs = inputs or {}
    cell = built.cell
    key = config_hash(
        {"model": model_key, "sampler": cell.sampler, "steps": cell.steps,
         "sampler_kw": built.sampler_kw, "guidance": cell.guidance,
         **({"prompts": cell.prompts} if cell.text is not None else {}), **TEACACHE_FIT,
         **inputs},
        kind=cls.fit_kind,
    )  # fmt: skip
    n = TEACACHE_FIT["batch"]
    cond = None
    if cell.text is not None:
        info, context = conditions
        cond = cell_conditions(cell, n, info, context)[0].to(built.device)
    elif cell.guidance is not None:
        cond = torch.arange(n, device=built.device) % built.model.num_classes

    def build() -> tuple[dict[str, Tensor], dict[str, Any]]:
        fitted, info = cls.fit(
            built.model, built.schedule, cell.sampler, cell.steps, guidance=cell.guidance,
            cond=cond, sampler_kw=built.sampler_kw, **TEACACHE_FIT, **inputs,
        )  # fmt: skip
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in fitted.items()}, info

    tensors, meta, _ = cache.get_or_build(cls.fit_kind, key, build)
    return {**{k: tensors[k].tolist() for k in cls.fitted}, "calls": int(meta["calls"])}


# Learning-to-Cache's router training (caching.l2c.train_router): trajectories of this many
# samples, iterations, batch and sparsity weight. Part of the router's artifact key.
# alternate: full and cache calls alternate, as the authors run it (caching.l2c).
L2C_TRAINING = dict(n=256, iters=400, batch=64, lam=1e-3, lr=0.05, seed=0, alternate=True)


def load_or_learn_router(
    model: UViT,
    model_key: str,
    schedule: VPSchedule,
    cell: Cell,
    sampler_kw: dict[str, Any],
    cache: ArtifactCache,
    *,
    progress: bool = True,
    cond: Tensor | None = None,
) -> Tensor:
    """The Learning-to-Cache router of ``model`` (artifact key ``model_key``) for the cell's
    sampler, steps, options and guidance: from the cache, or learned and cached."""
    key = config_hash(
        {
            "model": model_key,
            "sampler": cell.sampler,
            "steps": cell.steps,
            "sampler_kw": sampler_kw,
            "guidance": cell.guidance,
            "autocast": cell.autocast,
            **({"prompts": cell.prompts} if cell.text is not None else {}),
            **L2C_TRAINING,
        },
        kind="l2c",
    )

    def build() -> tuple[dict[str, Tensor], dict[str, Any]]:
        router, info = train_router(
            model,
            schedule,
            cell.sampler,
            cell.steps,
            sampler_kw=sampler_kw,
            guidance=cell.guidance,
            progress=progress,
            cond=cond,
            **L2C_TRAINING,
        )
        return {"router": router}, info

    tensors, _, _ = cache.get_or_build("l2c", key, build)
    return tensors["router"]
