"""Classifier-free guidance as a denoiser wrapper (Ho & Salimans 2022, Eq. 6)."""

from __future__ import annotations

import torch
from torch import Tensor

from samplers.base import Denoiser

__all__ = ["ClassifierFreeGuidance"]


class ClassifierFreeGuidance:
    """``eps = eps(x, t, null) + scale * (eps(x, t, cond) - eps(x, t, null))``.

    Conditional and unconditional rows go through the wrapped denoiser as one batch of ``2B``
    (conditional first), so an early-exit executor decides per row for each half. ``scale = 1``
    is plain conditional sampling; ``null_cond`` is the null condition: the null class's label,
    or any tensor that broadcasts against one row of ``cond`` (e.g. the empty prompt's text
    context, ``(L, E)`` against conditions of ``(B, L, E)``).
    """

    def __init__(self, denoiser: Denoiser, scale: float, null_cond: int | Tensor) -> None:
        if not scale >= 0:
            raise ValueError(f"guidance scale must be >= 0, got {scale!r}")
        self.denoiser = denoiser
        self.scale = float(scale)
        self.null_cond = null_cond

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        """Guided eps of ``x`` (B, ...) at ``t`` (B,) with ``cond`` (B, ...), from one batch of 2B
        rows (conditional first); a ``ValueError`` without ``cond``."""
        if cond is None:
            raise ValueError("classifier-free guidance needs a condition (labels or a context)")
        null = torch.as_tensor(self.null_cond, device=cond.device, dtype=cond.dtype)
        null = null.expand_as(cond) if null.shape != cond.shape else null
        eps = self.denoiser(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, null]))
        eps_c, eps_u = eps.chunk(2)
        return eps_u + self.scale * (eps_c - eps_u)
