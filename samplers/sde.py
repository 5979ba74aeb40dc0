"""Euler–Maruyama on the reverse-time VP SDE (Song et al. 2021, "Score-Based Generative Modeling
through Stochastic Differential Equations", Eq. 6), the sampler of U-ViT's and AdaDiff's CIFAR-10 /
CelebA results (1,000 steps, uniform in ``t``)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from samplers.base import (
    Callback,
    Denoiser,
    Eval,
    SamplerOutput,
    check_nonneg,
    clip,
    initial_noise,
    make_grid,
    noise_like,
)
from samplers.schedule import VPSchedule

__all__ = ["euler_maruyama"]


def euler_maruyama(
    denoiser: Denoiser,
    schedule: VPSchedule,
    x: Tensor | Sequence[int],
    steps: int,
    *,
    generator: torch.Generator | None = None,
    cond: Tensor | None = None,
    callback: Callback | None = None,
    clip_denoised: float | None = None,
    spacing: str = "time-uniform",
    end: str = "zero",
    timesteps: Sequence[float] | None = None,
) -> SamplerOutput:
    """Reverse VP SDE ``dx = [f(t) x - g(t)^2 grad log p_t(x)] dt + g(t) dw``, Euler–Maruyama.

    With ``f = d log alpha / dt`` (:meth:`~samplers.VPSchedule.log_alpha_slope`),
    ``g^2 = -2 f`` and the score ``-eps / sigma``, a step from ``s`` down to ``t``
    (``dt = s - t``) is ``x_t = x_s - dt (f x_s + g^2 eps / sigma_s) + g sqrt(dt) z``. The step to
    clean data returns the ``x0`` estimate (Song et al.'s final denoising step, in place of U-ViT's
    noise-free last Euler step). ``clip_denoised`` only clips that final estimate. One NFE per
    step; ``generator`` draws every step's noise.
    """
    check_nonneg("clip_denoised", clip_denoised)
    xt = initial_noise(schedule, x, steps, generator, cond)
    grid = make_grid(schedule, steps, spacing, end, timesteps)
    model = Eval(denoiser, cond)
    for i, (s, t) in enumerate(itertools.pairwise(grid)):
        eps = model(xt, s.model_t)
        x0 = clip((xt - s.sigma * eps) / s.alpha, clip_denoised)
        if t.clean:
            xt = x0
        else:
            dt = s.time - t.time
            f = schedule.log_alpha_slope(s.time)
            g2 = -2.0 * f
            drift = f * xt + (g2 / s.sigma) * eps
            xt = xt - dt * drift + math.sqrt(g2 * dt) * noise_like(xt, generator)
        if callback is not None:
            callback({"step": i, "t": s.model_t, "x": xt, "denoised": x0, "nfe": model.nfe})
    return SamplerOutput(xt, model.nfe)
