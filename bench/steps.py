"""The pieces of one training step: endless shuffled batches, the learning-rate schedule, the
EMA update and the noisy inputs of the eps-prediction loss (Ho et al. 2020)."""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import nn

from bench.data import TensorImages


class NoiseConfig(Protocol):
    """The fields of a training config (:class:`bench.train.TrainConfig`) a noisy batch reads."""

    T: int
    class_cond: bool
    p_uncond: float
    text: str | None


__all__ = ["BatchStream", "ema_update", "lr_at", "noisy_batch"]


class BatchStream:
    """Endless shuffled batches whose position can be saved (:mod:`bench.resume`): a new
    permutation is drawn from ``gen`` when the previous one is used up, so the draws interleave
    with the noise draws exactly as in one uninterrupted run. In-memory data sets are indexed
    directly (no collation cost); others item by item."""

    def __init__(self, ds, batch_size: int, gen: torch.Generator) -> None:
        self.ds, self.batch_size, self.gen = ds, batch_size, gen
        n = len(ds)
        self._starts = list(range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size))
        self.perm: torch.Tensor | None = None
        self.pos = 0  # index into _starts of the next batch

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.perm is None or self.pos == len(self._starts):
            self.perm = torch.randperm(len(self.ds), generator=self.gen)
            self.pos = 0
        i = self._starts[self.pos]
        self.pos += 1
        idx = self.perm[i : i + self.batch_size]
        if isinstance(self.ds, TensorImages):
            return self.ds.images[idx], self.ds.labels[idx]
        items = [self.ds[int(j)] for j in idx]
        return torch.stack([x for x, _ in items]), torch.as_tensor([int(y) for _, y in items])

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        """The position to save: the current permutation (if any) as tensors, the next batch's
        index as metadata."""
        return ({} if self.perm is None else {"perm": self.perm.clone()}), {"pos": self.pos}

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, int]) -> None:
        """Continue from a position that :meth:`state` returned."""
        self.perm = tensors.get("perm")
        self.pos = int(meta["pos"])


def lr_at(step: int, steps: int, lr: float, min_lr: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to ``min_lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = (step - warmup) / max(1, steps - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * frac))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, step: int, decay: float) -> None:
    """Move ``ema``'s parameters toward ``model``'s in place, with the decay warmed up:
    ``min(decay, (1 + step) / (10 + step))``."""
    # Warm-up of the decay: early on the EMA follows the weights closely, so it is not dominated
    # by the random initialisation (a fixed 0.999 keeps 10% of it after 2,300 steps).
    d = min(decay, (1 + step) / (10 + step))
    for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
        pe.lerp_(pm, 1 - d)


def noisy_batch(cfg: NoiseConfig, info, x0, y, ab, gen, device, context=None):
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
