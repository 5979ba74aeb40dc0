"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models"), data prediction, B(h) variants ``bh1`` / ``bh2``.

Each step runs the predictor UniP-p (Algorithm 2) from ``s`` to ``t``; the model output at the
predicted ``x_t`` then feeds the corrector UniC-p (Algorithm 1), which refines ``x_t`` with no
extra evaluation (the next step reuses that output). The corrector is not applied after the last
step, which has no evaluation to use.
"""

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
    check_order,
    initial_noise,
    make_grid,
    multistep_order,
)
from samplers.grid import Point
from samplers.schedule import VPSchedule

__all__ = ["VARIANTS", "unipc"]

VARIANTS = ("bh1", "bh2")
History = list[tuple[float, Tensor]]


def _coefficients(rks: list[float], h: float, variant: str, order: int):
    """``R`` (rows ``r_k^(i-1)``), ``b_i = i! phi_{i+1}(-h) / B(h)`` and ``B(h)`` of Eq. (8).

    ``B(h) = h`` (bh1) or ``e^h - 1`` (bh2), with ``h`` the signed step of data prediction.
    """
    hh = -h
    b_h = hh if variant == "bh1" else math.expm1(hh)
    h_phi_1 = math.expm1(hh)
    h_phi_k, fact = h_phi_1 / hh - 1.0, 1
    rows, b = [], []
    for i in range(1, order + 1):
        rows.append([r ** (i - 1) for r in rks])
        b.append(h_phi_k * fact / b_h)
        fact *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    return torch.tensor(rows, dtype=torch.float64), torch.tensor(b, dtype=torch.float64), b_h


def _differences(hist: History, s_lam: float, h: float, order: int):
    """``r_k = (lambda_{s_k} - lambda_s) / h`` and ``D_k = (m_k - m_s) / r_k`` for the
    ``order - 1`` points before ``s`` (``hist`` ends with ``s``)."""
    m0 = hist[-1][1]
    rks, ds = [], []
    for k in range(1, order):
        lam_k, m_k = hist[-(k + 1)]
        r = (lam_k - s_lam) / h
        rks.append(r)
        ds.append((m_k - m0) / r)
    return rks, ds


def _combine(rhos: Sequence[float], ds: Sequence[Tensor]) -> Tensor | float:
    out: Tensor | float = 0.0
    for rho, d in zip(rhos, ds, strict=False):
        out = out + rho * d
    return out


def _predict(x: Tensor, s: Point, t: Point, hist: History, k: int, variant: str) -> Tensor:
    """UniP-k: ``x_t = (sigma_t / sigma_s) x - alpha_t h phi_1 m_s - alpha_t B(h) sum rho D``."""
    h = t.lam - s.lam
    rks, ds = _differences(hist, s.lam, h, k)
    rows, b, b_h = _coefficients([*rks, 1.0], h, variant, k)
    if k == 1:
        rhos: list[float] = []
    elif k == 2:
        rhos = [0.5]  # the official code's choice for UniP-2 (not the solve below)
    else:
        rhos = torch.linalg.solve(rows[:-1, :-1], b[:-1]).tolist()
    x_t = (t.sigma / s.sigma) * x - t.alpha * math.expm1(-h) * hist[-1][1]
    return x_t - t.alpha * b_h * _combine(rhos, ds)


def _correct(
    x_s: Tensor, s: Point, t: Point, hist: History, m_t: Tensor, k: int, variant: str
) -> Tensor:
    """UniC-k at ``t`` with ``m_t``, the model output at the predicted ``x_t``."""
    h = t.lam - s.lam
    rks, ds = _differences(hist, s.lam, h, k)
    rows, b, b_h = _coefficients([*rks, 1.0], h, variant, k)
    rhos = [0.5] if k == 1 else torch.linalg.solve(rows, b).tolist()
    m_s = hist[-1][1]
    x_t = (t.sigma / s.sigma) * x_s - t.alpha * math.expm1(-h) * m_s
    return x_t - t.alpha * b_h * (_combine(rhos[:-1], ds) + rhos[-1] * (m_t - m_s))


def unipc(
    denoiser: Denoiser,
    schedule: VPSchedule,
    x: Tensor | Sequence[int],
    steps: int,
    *,
    generator: torch.Generator | None = None,
    cond: Tensor | None = None,
    callback: Callback | None = None,
    order: int = 2,
    variant: str = "bh2",
    corrector: bool = True,
    lower_order_final: bool = True,
    clip_denoised: float | None = None,
    spacing: str = "logSNR",
    end: str = "zero",
    timesteps: Sequence[float] | None = None,
) -> SamplerOutput:
    """UniPC-p (UniP-p with UniC-p, accuracy order p + 1), p = ``order`` in 1-3, one NFE per step.

    As diffusers' ``UniPCMultistepScheduler(predict_x0=True)``: warm-up at lower order, and with
    ``lower_order_final`` the last steps drop to order ``steps - i`` at every step count.
    ``corrector=False`` runs UniP alone.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown UniPC variant {variant!r}; valid choices: {', '.join(VARIANTS)}")
    check_order(f"unipc-{variant}", order, (1, 2, 3), steps)
    check_nonneg("clip_denoised", clip_denoised)
    xt = initial_noise(schedule, x, steps, generator, cond)
    grid = make_grid(schedule, steps, spacing, end, timesteps)
    model = Eval(denoiser, cond, callback)
    hist: History = []
    x_prev, k_prev = xt, 0
    for i, (s, t) in enumerate(itertools.pairwise(grid)):
        m = model.x0(xt, s, clip_denoised)
        if corrector and hist:
            xt = _correct(x_prev, grid[i - 1], s, hist, m, k_prev, variant)
        hist = [*hist[-2:], (s.lam, m)]
        k = multistep_order(i, steps, order, lower_order_final, t.clean, below=math.inf)
        x_prev, k_prev = xt, k
        xt = m if t.clean else _predict(xt, s, t, hist, k, variant)
        model.step_done(i, s.model_t, xt, m)
    return SamplerOutput(xt, model.nfe)
