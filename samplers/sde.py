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
from samplers.grid import Point
from samplers.schedule import VPSchedule

__all__ = ["check_stable", "euler_maruyama"]


def check_stable(schedule: VPSchedule, grid: Sequence[Point]) -> None:
    """Refuse a grid on which the explicit step is unstable: near ``t = 1`` the score term
    turns the drift into ``-f x``, so ``x`` is multiplied by about ``1 + f dt``, which must stay
    in ``[-1, 1]``. Discrete schedules whose ``beta`` approaches 1 (the cosine schedule clips
    ``beta`` at 0.999, i.e. ``beta(t) = -2 f`` near 7,000) need more steps than ``T`` there;
    U-ViT's continuous linear VP SDE (``beta(t) <= 20``) and the linear schedule do not."""
    for s, t in itertools.pairwise(grid):
        if t.clean:
            continue
        fdt = -schedule.log_alpha_slope(s.time) * (s.time - t.time)
        if fdt > 1.0:
            raise ValueError(
                f"euler-maruyama is unstable on this grid: |f(t) dt| = {fdt:.3g} > 1 at "
                f"t = {s.time:.4g} (the {schedule.name} schedule's beta(t) is "
                f"{-2 * schedule.log_alpha_slope(s.time):.4g} there); use more steps, a "
                "schedule with a bounded beta (linear), or ddpm / dpm-solver++-sde"
            )


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
    step; ``generator`` draws every step's noise. Unstable grids are refused
    (:func:`check_stable`).
    """
    check_nonneg("clip_denoised", clip_denoised)
    xt = initial_noise(schedule, x, steps, generator, cond)
    grid = make_grid(schedule, steps, spacing, end, timesteps)
    check_stable(schedule, grid)
    model = Eval(denoiser, cond, callback)
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
        model.step_done(i, s.model_t, xt, x0)
    return SamplerOutput(xt, model.nfe)
