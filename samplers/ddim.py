"""The first-order classics: DDPM ancestral sampling and DDIM, on any time grid."""

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

__all__ = ["ddim", "ddpm"]


def ddpm(
    denoiser: Denoiser,
    schedule: VPSchedule,
    x: Tensor | Sequence[int],
    steps: int,
    *,
    generator: torch.Generator | None = None,
    cond: Tensor | None = None,
    callback: Callback | None = None,
    clip_denoised: float | None = None,
    spacing: str = "trailing",
    end: str = "zero",
    timesteps: Sequence[float] | None = None,
) -> SamplerOutput:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), respaced to ``steps`` steps.

    With respacing (Nichol & Dhariwal 2021, Sec. 4) the chain visits the grid's points with
    ``beta'_t = 1 - alpha_bar_t / alpha_bar_prev`` and samples the posterior
    ``q(x_prev | x_t, x0_hat)`` (Ho et al. Eq. 6-7) with variance ``beta_tilde``. A step to clean
    data adds no noise. One NFE per step.
    """
    check_nonneg("clip_denoised", clip_denoised)
    xt = initial_noise(schedule, x, steps, generator, cond)
    grid = make_grid(schedule, steps, spacing, end, timesteps)
    model = Eval(denoiser, cond, callback)
    for i, (s, t) in enumerate(itertools.pairwise(grid)):
        ab_t, ab_prev = s.alpha_bar, t.alpha_bar
        beta = 1.0 - ab_t / ab_prev
        eps = model(xt, s.model_t)
        x0 = clip((xt - math.sqrt(1.0 - ab_t) * eps) / math.sqrt(ab_t), clip_denoised)
        mean = (math.sqrt(ab_prev) * beta / (1.0 - ab_t)) * x0 + (
            math.sqrt(1.0 - beta) * (1.0 - ab_prev) / (1.0 - ab_t)
        ) * xt
        var = beta * (1.0 - ab_prev) / (1.0 - ab_t)
        xt = mean if t.clean else mean + math.sqrt(var) * noise_like(xt, generator)
        model.step_done(i, s.model_t, xt, x0)
    return SamplerOutput(xt, model.nfe)


def ddim(
    denoiser: Denoiser,
    schedule: VPSchedule,
    x: Tensor | Sequence[int],
    steps: int,
    *,
    generator: torch.Generator | None = None,
    cond: Tensor | None = None,
    callback: Callback | None = None,
    eta: float = 0.0,
    clip_denoised: float | None = None,
    spacing: str = "trailing",
    end: str = "zero",
    timesteps: Sequence[float] | None = None,
) -> SamplerOutput:
    """DDIM (Song et al. 2021, Eq. 12) from each grid point to the next.

    ``x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - s^2) eps + s z`` with
    ``s = eta * sqrt((1 - ab_prev) / (1 - ab_t)) * sqrt(1 - ab_t / ab_prev)`` (Eq. 16);
    ``eta = 0`` is the deterministic sampler (the first-order solver of the probability-flow ODE
    in ``lambda``), ``eta = 1`` coincides with DDPM ancestral sampling. One NFE per step.
    """
    check_nonneg("eta", eta)
    check_nonneg("clip_denoised", clip_denoised)
    xt = initial_noise(schedule, x, steps, generator, cond)
    grid = make_grid(schedule, steps, spacing, end, timesteps)
    model = Eval(denoiser, cond, callback)
    for i, (s, t) in enumerate(itertools.pairwise(grid)):
        ab_t, ab_prev = s.alpha_bar, t.alpha_bar
        eps = model(xt, s.model_t)
        x0 = clip((xt - math.sqrt(1.0 - ab_t) * eps) / math.sqrt(ab_t), clip_denoised)
        if clip_denoised is not None:  # keep eps consistent with the clipped x0
            eps = (xt - math.sqrt(ab_t) * x0) / math.sqrt(1.0 - ab_t)
        sigma = eta * math.sqrt((1.0 - ab_prev) / (1.0 - ab_t) * (1.0 - ab_t / ab_prev))
        xt = math.sqrt(ab_prev) * x0 + math.sqrt(max(1.0 - ab_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            xt = xt + sigma * noise_like(xt, generator)
        model.step_done(i, s.model_t, xt, x0)
    return SamplerOutput(xt, model.nfe)
