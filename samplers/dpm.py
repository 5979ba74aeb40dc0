"""DPM-Solver (Lu et al. 2022) and DPM-Solver++ (Lu et al. 2022b): exponential integrators of the
probability-flow ODE in the half-log-SNR ``lambda``, singlestep and multistep, noise and data
prediction, and the SDE variant of DPM-Solver++(2M).

Notation: a step goes from grid point ``s`` to ``t`` with ``h = lambda_t - lambda_s > 0``;
``m`` is the model output in the solver's parametrisation (``eps`` for DPM-Solver, ``x0`` for
DPM-Solver++), and the multistep history holds ``(lambda, m)`` of past points, newest last.
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
    clip,
    initial_noise,
    make_grid,
    multistep_order,
    noise_like,
)
from samplers.grid import Point, continuous_point, singlestep_grid
from samplers.schedule import VPSchedule

__all__ = [
    "dpm_solver",
    "dpm_solver_multistep",
    "dpm_solver_pp",
    "dpm_solver_pp_sde",
    "dpm_solver_pp_singlestep",
    "singlestep_orders",
]

History = list[tuple[float, Tensor]]


def singlestep_orders(steps: int, order: int, to_clean: bool = False) -> list[int]:
    """How DPM-Solver splits an NFE budget into steps of each order (Lu et al. 2022, Sec. 3.4,
    "DPM-Solver-fast"). With ``to_clean`` the last evaluation is the first-order jump to data."""
    if to_clean:
        return ([] if steps == 1 else singlestep_orders(steps - 1, order)) + [1]
    if order == 3:
        k = steps // 3 + 1
        if steps % 3 == 0:
            return [3] * (k - 2) + [2, 1]
        if steps % 3 == 1:
            return [3] * (k - 1) + [1]
        return [3] * (k - 1) + [2]
    if order == 2:
        return [2] * (steps // 2) + ([1] if steps % 2 else [])
    return [1] * steps


def _at_lambda(schedule: VPSchedule, lam: float) -> Point:
    t = schedule.inverse_lambda(torch.tensor(lam, dtype=torch.float64)).item()
    return continuous_point(schedule, t)


def _eps_single_step(model: Eval, schedule: VPSchedule, x: Tensor, s: Point, t: Point, k: int):
    """One DPM-Solver-k step (Lu et al. 2022, Algorithms 1-2, r1 = 1/2 resp. 1/3, 2/3)."""
    eps_s = model(x, s.model_t)
    x0 = (x - s.sigma * eps_s) / s.alpha
    if t.clean:
        return x0, x0
    h = t.lam - s.lam
    phi = math.expm1(h)
    base = (t.alpha / s.alpha) * x - t.sigma * phi * eps_s
    if k == 1:
        return base, x0
    if k == 2:
        r1 = 0.5
        p1 = _at_lambda(schedule, s.lam + r1 * h)
        u1 = (p1.alpha / s.alpha) * x - p1.sigma * math.expm1(r1 * h) * eps_s
        return base - (t.sigma / (2 * r1)) * phi * (model(u1, p1.model_t) - eps_s), x0
    r1, r2 = 1.0 / 3.0, 2.0 / 3.0
    p1, p2 = _at_lambda(schedule, s.lam + r1 * h), _at_lambda(schedule, s.lam + r2 * h)
    u1 = (p1.alpha / s.alpha) * x - p1.sigma * math.expm1(r1 * h) * eps_s
    d1 = model(u1, p1.model_t) - eps_s
    phi_r2 = math.expm1(r2 * h)
    u2 = (
        (p2.alpha / s.alpha) * x
        - p2.sigma * phi_r2 * eps_s
        - p2.sigma * (r2 / r1) * (phi_r2 / (r2 * h) - 1.0) * d1
    )
    d2 = model(u2, p2.model_t) - eps_s
    return base - (t.sigma / r2) * (phi / h - 1.0) * d2, x0


def _data_single_step(
    model: Eval,
    schedule: VPSchedule,
    x: Tensor,
    s: Point,
    t: Point,
    k: int,
    clip_denoised: float | None,
):
    """One DPM-Solver++ singlestep step of order k (Lu et al. 2022b, Algorithm 1 for k = 2, the
    official ``singlestep_dpm_solver_third_update`` for k = 3)."""
    m_s = model.x0(x, s, clip_denoised)
    if t.clean:
        return m_s, m_s
    h = t.lam - s.lam
    phi_1 = math.expm1(-h)
    base = (t.sigma / s.sigma) * x - t.alpha * phi_1 * m_s
    if k == 1:
        return base, m_s
    if k == 2:
        r1 = 0.5
        p1 = _at_lambda(schedule, s.lam + r1 * h)
        u1 = (p1.sigma / s.sigma) * x - p1.alpha * math.expm1(-r1 * h) * m_s
        d1 = model.x0(u1, p1, clip_denoised) - m_s
        return base - (0.5 / r1) * t.alpha * phi_1 * d1, m_s
    r1, r2 = 1.0 / 3.0, 2.0 / 3.0
    p1, p2 = _at_lambda(schedule, s.lam + r1 * h), _at_lambda(schedule, s.lam + r2 * h)
    u1 = (p1.sigma / s.sigma) * x - p1.alpha * math.expm1(-r1 * h) * m_s
    d1 = model.x0(u1, p1, clip_denoised) - m_s
    phi_12 = math.expm1(-r2 * h)
    phi_22 = phi_12 / (r2 * h) + 1.0
    u2 = (p2.sigma / s.sigma) * x - p2.alpha * phi_12 * m_s + (r2 / r1) * p2.alpha * phi_22 * d1
    d2 = model.x0(u2, p2, clip_denoised) - m_s
    return base + (1.0 / r2) * t.alpha * (phi_1 / h + 1.0) * d2, m_s


def _singlestep(
    step_fn,
    name: str,
    denoiser: Denoiser,
    schedule: VPSchedule,
    x: Tensor | Sequence[int],
    steps: int,
    generator: torch.Generator | None,
    cond: Tensor | None,
    callback: Callback | None,
    order: int,
    spacing: str,
    end: str,
) -> SamplerOutput:
    check_order(name, order, (1, 2, 3), steps)
    xt = initial_noise(schedule, x, steps, generator, cond)
    orders = singlestep_orders(steps, order, to_clean=end == "zero")
    grid = singlestep_grid(schedule, orders, steps, spacing, end)
    model = Eval(denoiser, cond, callback)
    for i, k in enumerate(orders):
        s = grid[i]
        xt, x0 = step_fn(model, schedule, xt, s, grid[i + 1], k)
        model.step_done(i, s.model_t, xt, x0)
    return SamplerOutput(xt, model.nfe)


def dpm_solver(
    denoiser: Denoiser,
    schedule: VPSchedule,
    x: Tensor | Sequence[int],
    steps: int,
    *,
    generator: torch.Generator | None = None,
    cond: Tensor | None = None,
    callback: Callback | None = None,
    order: int = 3,
    spacing: str = "logSNR",
    end: str = "eps",
) -> SamplerOutput:
    """Singlestep DPM-Solver-1/2/3 (Lu et al. 2022, Algorithms 1-2, Eq. 3.7-3.8), noise prediction.

    The budget of ``steps`` NFE is split into outer steps of order ``order`` (DPM-Solver-fast,
    Sec. 3.4) on :func:`~samplers.grid.singlestep_grid`. Defaults as the official code for
    discrete-time models: ``logSNR`` grid from ``t = 1`` to ``t = 1/T``, the result is ``x``
    there. Deterministic (generator only draws the initial noise).
    """
    return _singlestep(
        _eps_single_step, "dpm-solver", denoiser, schedule, x, steps,
        generator, cond, callback, order, spacing, end,
    )  # fmt: skip


def dpm_solver_pp_singlestep(
    denoiser: Denoiser,
    schedule: VPSchedule,
    x: Tensor | Sequence[int],
    steps: int,
    *,
    generator: torch.Generator | None = None,
    cond: Tensor | None = None,
    callback: Callback | None = None,
    order: int = 2,
    clip_denoised: float | None = None,
    spacing: str = "logSNR",
    end: str = "zero",
) -> SamplerOutput:
    """Singlestep DPM-Solver++(2S) / (3S) (Lu et al. 2022b, Algorithm 1), data prediction.

    The NFE budget is split as for :func:`dpm_solver`; ``clip_denoised`` clips every ``x0``
    prediction (Lu et al. 2022b's thresholding in its simplest, static form).
    """
    check_nonneg("clip_denoised", clip_denoised)

    def step(model, sch, x_, s, t, k):
        return _data_single_step(model, sch, x_, s, t, k, clip_denoised)

    return _singlestep(
        step, "dpm-solver++-singlestep", denoiser, schedule, x, steps,
        generator, cond, callback, order, spacing, end,
    )  # fmt: skip


def _data_update(
    x: Tensor, s: Point, t: Point, hist: History, k: int, taylor_3m: bool = False
) -> Tensor:
    """DPM-Solver++ multistep update of order k (Lu et al. 2022b, Algorithm 2; 3M as in the
    official ``multistep_dpm_solver_third_update``, or with ``taylor_3m`` its Taylor-consistent
    second-difference term, see :func:`_third_order_differences`)."""
    h = t.lam - s.lam
    m0 = hist[-1][1]
    if k == 1:
        return (t.sigma / s.sigma) * x - t.alpha * math.expm1(-h) * m0
    r0 = (s.lam - hist[-2][0]) / h
    if k == 2:
        d = (1.0 + 0.5 / r0) * m0 - (0.5 / r0) * hist[-2][1]
        return (t.sigma / s.sigma) * x - t.alpha * math.expm1(-h) * d
    d1, d2 = _third_order_differences(hist, h, taylor_3m)
    phi_1 = math.expm1(-h)
    return (
        (t.sigma / s.sigma) * x
        - t.alpha * phi_1 * m0
        + t.alpha * (phi_1 / h + 1.0) * d1
        - t.alpha * ((phi_1 + h) / h**2 - 0.5) * d2
    )


def _eps_update(
    x: Tensor, s: Point, t: Point, hist: History, k: int, taylor_3m: bool = False
) -> Tensor:
    """Multistep DPM-Solver (noise prediction) update of order k (Lu et al. 2022b, App. B)."""
    h = t.lam - s.lam
    m0, phi_1 = hist[-1][1], math.expm1(h)
    base = (t.alpha / s.alpha) * x - t.sigma * phi_1 * m0
    if k == 1:
        return base
    if k == 2:
        r0 = (s.lam - hist[-2][0]) / h
        return base - 0.5 * t.sigma * phi_1 * (m0 - hist[-2][1]) / r0
    d1, d2 = _third_order_differences(hist, h, taylor_3m)
    return base - t.sigma * (phi_1 / h - 1.0) * d1 - t.sigma * ((phi_1 - h) / h**2 - 0.5) * d2


def _third_order_differences(
    hist: History, h: float, taylor_3m: bool = False
) -> tuple[Tensor, Tensor]:
    """``D1 ~ h m'`` and ``D2`` from the last three outputs, as the official code and diffusers
    form them.

    Their ``D2 = (D1_0 - D1_1) / (r0 + r1)`` estimates ``h^2 m'' / 2``, while the coefficient it
    multiplies, ``phi_3``, belongs to ``h^2 m''`` (expand ``m`` to second order in the
    exact-solution integral). So the official 3M step has local error O(h^3), not O(h^4): it is
    a second-order method with a smaller constant (``tests/test_sampler_orders.py`` measures
    both). ``taylor_3m`` doubles ``D2``, which restores local order 4 (and equals UniP-3).
    """
    (lam2, m2), (lam1, m1), (lam0, m0) = hist[-3:]
    r0, r1 = (lam0 - lam1) / h, (lam1 - lam2) / h
    d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
    d2 = (d1_0 - d1_1) / (r0 + r1)
    return d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1), 2.0 * d2 if taylor_3m else d2


def _multistep(
    update,
    data: bool,
    name: str,
    orders: tuple[int, ...],
    denoiser: Denoiser,
    schedule: VPSchedule,
    x: Tensor | Sequence[int],
    steps: int,
    opts: dict,
) -> SamplerOutput:
    """The multistep loop: one evaluation per grid point, ``update(x, s, t, hist, k)``."""
    check_order(name, opts["order"], orders, steps)
    check_nonneg("clip_denoised", opts.get("clip_denoised"))
    xt = initial_noise(schedule, x, steps, opts["generator"], opts["cond"])
    grid = make_grid(schedule, steps, opts["spacing"], opts["end"], opts.get("timesteps"))
    model = Eval(denoiser, opts["cond"], opts["callback"])
    hist: History = []
    for i, (s, t) in enumerate(itertools.pairwise(grid)):
        eps = model(xt, s.model_t)
        x0 = clip((xt - s.sigma * eps) / s.alpha, opts.get("clip_denoised"))
        hist = [*hist[-2:], (s.lam, x0 if data else eps)]
        k = multistep_order(i, steps, opts["order"], opts["lower_order_final"], t.clean)
        xt = x0 if t.clean else update(xt, s, t, hist, k, opts.get("taylor_3m", False))
        model.step_done(i, s.model_t, xt, x0)
    return SamplerOutput(xt, model.nfe)


def dpm_solver_pp(
    denoiser: Denoiser,
    schedule: VPSchedule,
    x: Tensor | Sequence[int],
    steps: int,
    *,
    generator: torch.Generator | None = None,
    cond: Tensor | None = None,
    callback: Callback | None = None,
    order: int = 2,
    lower_order_final: bool = True,
    taylor_3m: bool = False,
    clip_denoised: float | None = None,
    spacing: str = "trailing",
    end: str = "zero",
    timesteps: Sequence[float] | None = None,
) -> SamplerOutput:
    """Multistep DPM-Solver++(1M/2M/3M) (Lu et al. 2022b, Algorithm 2), data prediction.

    Order 2: ``x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D`` with
    ``D = (1 + 1/(2 r)) x0_s - 1/(2 r) x0_prev``, ``r = h_prev / h``; order 3 adds the second
    divided difference. The first steps warm up at lower order, a step to clean data is first
    order, and :func:`~samplers.base.multistep_order` lowers the last steps' order when
    ``lower_order_final`` (as diffusers' ``DPMSolverMultistepScheduler``). The defaults (2M,
    trailing grid to clean data) are the suite's original ``dpm-solver++``. ``taylor_3m`` corrects
    the official 3M's second-difference term (:func:`_third_order_differences`). One NFE per
    step.
    """
    opts = dict(locals())
    return _multistep(_data_update, True, "dpm-solver++", (1, 2, 3), **_pop_args(opts))


def dpm_solver_multistep(
    denoiser: Denoiser,
    schedule: VPSchedule,
    x: Tensor | Sequence[int],
    steps: int,
    *,
    generator: torch.Generator | None = None,
    cond: Tensor | None = None,
    callback: Callback | None = None,
    order: int = 2,
    lower_order_final: bool = True,
    taylor_3m: bool = False,
    spacing: str = "logSNR",
    end: str = "zero",
    timesteps: Sequence[float] | None = None,
) -> SamplerOutput:
    """Multistep DPM-Solver (noise prediction), orders 1-3 (Lu et al. 2022b, App. B; diffusers'
    ``algorithm_type="dpmsolver"``). Order schedule as :func:`dpm_solver_pp`. One NFE per step."""
    opts = dict(locals())
    return _multistep(_eps_update, False, "dpm-solver-multistep", (1, 2, 3), **_pop_args(opts))


def dpm_solver_pp_sde(
    denoiser: Denoiser,
    schedule: VPSchedule,
    x: Tensor | Sequence[int],
    steps: int,
    *,
    generator: torch.Generator | None = None,
    cond: Tensor | None = None,
    callback: Callback | None = None,
    order: int = 2,
    lower_order_final: bool = True,
    clip_denoised: float | None = None,
    spacing: str = "logSNR",
    end: str = "zero",
    timesteps: Sequence[float] | None = None,
) -> SamplerOutput:
    """SDE-DPM-Solver++(1M/2M) (Lu et al. 2022b, App. C; diffusers' ``sde-dpmsolver++``,
    midpoint): ``x_t = (sigma_t / sigma_s) e^{-h} x_s + alpha_t (1 - e^{-2h}) (D0 + D1 / 2)
    + sigma_t sqrt(1 - e^{-2h}) z`` with ``D0 = x0_s``, ``D1 = (x0_s - x0_prev) / r``. Stochastic
    (``generator`` draws every step's noise). One NFE per step."""
    opts = dict(locals())

    def update(x_: Tensor, s: Point, t: Point, hist: History, k: int, _taylor: bool) -> Tensor:
        h = t.lam - s.lam
        m0, one_m = hist[-1][1], -math.expm1(-2.0 * h)
        d = m0 if k == 1 else m0 + 0.5 * (m0 - hist[-2][1]) * h / (s.lam - hist[-2][0])
        noise = noise_like(x_, generator)
        return (
            (t.sigma / s.sigma * math.exp(-h)) * x_
            + t.alpha * one_m * d
            + t.sigma * math.sqrt(one_m) * noise
        )

    return _multistep(update, True, "dpm-solver++-sde", (1, 2), **_pop_args(opts))


def _pop_args(opts: dict) -> dict:
    """Split a sampler's ``locals()`` into the loop's positional inputs and its options."""
    keys = ("denoiser", "schedule", "x", "steps")
    args = {k: opts.pop(k) for k in keys}
    return {**args, "opts": opts}
