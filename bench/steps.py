"""The pieces of one training step: endless shuffled batches, the learning-rate schedule, the
EMA update and the noisy inputs of the eps-prediction loss (Ho et al. 2020)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import DataLoader

from bench.data import TensorImages

if TYPE_CHECKING:
    from bench.train import TrainConfig

__all__ = ["batches", "ema_update", "lr_at", "noisy_batch"]


def batches(ds, batch_size: int, gen: torch.Generator):
    """Endless shuffled batches; in-memory datasets are indexed directly (no collation cost)."""
    if isinstance(ds, TensorImages):
        n = len(ds)
        while True:
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
                idx = perm[i : i + batch_size]
                yield ds.images[idx], ds.labels[idx]
    else:
        loader = DataLoader(ds, batch_size, shuffle=True, drop_last=True, generator=gen)
        while True:
            yield from loader


def lr_at(step: int, steps: int, lr: float, min_lr: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to ``min_lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = (step - warmup) / max(1, steps - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * frac))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, step: int, decay: float) -> None:
    # Warm-up of the decay: early on the EMA follows the weights closely, so it is not dominated
    # by the random initialisation (a fixed 0.999 keeps 10% of it after 2,300 steps).
    d = min(decay, (1 + step) / (10 + step))
    for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
        pe.lerp_(pm, 1 - d)


def noisy_batch(cfg: TrainConfig, info, x0, y, ab, gen, device, context=None):
    """(x_t, t, cond, eps) for one batch: random flips where the dataset flips, uniform
    timesteps, Gaussian noise, label dropout for guidance (in this order: it fixes the draws).
    A text model's cond is each label's prompt in a random train template of ``context``
    (:class:`bench.text.TextContext`), the empty prompt where the label is dropped."""
    x0, y = x0.to(device), y.to(device)
    if info.hflip:  # only datasets that flip draw from the generator (digits stay as is)
        flip = (torch.rand(x0.shape[0], generator=gen) < 0.5).to(device)
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
    t = torch.randint(0, cfg.T, (x0.shape[0],), generator=gen).to(device)
    eps = torch.randn(x0.shape, generator=gen).to(device)
    a = ab[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    cond = None
    if cfg.class_cond:
        drop = torch.rand(y.shape, generator=gen).to(device) < cfg.p_uncond
        cond = torch.where(drop, torch.full_like(y, info.num_classes), y)
    elif cfg.text is not None:
        drop = (torch.rand(y.shape, generator=gen) < cfg.p_uncond).to(device)
        j = torch.randint(0, context.train.shape[1], y.shape, generator=gen)
        cond = context.train[y.cpu(), j].to(device)  # (B, L, E)
        cond = torch.where(drop[:, None, None], context.null.to(device), cond)
    return x_t, t, cond, eps
