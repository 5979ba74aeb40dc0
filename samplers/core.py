"""Samplers with one shared signature.

Every sampler is called as::

    out = sampler(denoiser, schedule, x, steps, generator=None, cond=None, callback=None, **opts)

- ``denoiser(x, t, cond) -> eps``: predicts the noise in ``x`` at model time ``t`` (a float tensor
  of shape ``(B,)`` holding the discrete timestep in ``[0, T-1]``, fractional for DPM-Solver's
  intermediate points). An early-exit executor, a pruned net and a plain net are all denoisers.
- ``schedule``: a :class:`~samplers.schedule.VPSchedule`.
- ``x``: the initial noise ``x_T`` (a tensor) or a shape, drawn from ``N(0, I)`` with ``generator``.
- ``steps``: the number of solver steps, ``1 <= steps <= T``.
- ``callback(info)``: called after every step with ``step``, ``t``, ``x``, ``denoised`` (the
  current x0 estimate) and ``nfe`` so far; use it for traces, timing and progress bars.

It returns a :class:`SamplerOutput` with the samples and the number of function evaluations
(NFE) actually made.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from samplers.schedule import VPSchedule

__all__ = [
    "SAMPLERS",
    "Denoiser",
    "SamplerOutput",
    "available",
    "ddim",
    "ddpm",
    "dpm_solver",
    "dpm_solver_pp",
    "get_sampler",
    "sample",
]


class Denoiser(Protocol):
    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor: ...


Callback = Callable[[dict[str, Any]], None]


@dataclass
class SamplerOutput:
    samples: Tensor
    nfe: int


class _Eval:
    """Calls the denoiser with a batched time tensor, checks its output and counts NFE."""

    def __init__(self, denoiser: Denoiser, cond: Tensor | None) -> None:
        self.denoiser = denoiser
        self.cond = cond
        self.nfe = 0

    def __call__(self, x: Tensor, t: float) -> Tensor:
        t_batch = torch.full((x.shape[0],), float(t), device=x.device, dtype=torch.float32)
        eps = self.denoiser(x, t_batch, self.cond)
        if not isinstance(eps, Tensor) or eps.shape != x.shape:
            got = tuple(eps.shape) if isinstance(eps, Tensor) else type(eps).__name__
            raise ValueError(
                f"denoiser must return eps of the input's shape {tuple(x.shape)}, got {got}"
            )
        self.nfe += 1
        return eps


def _initial_noise(
    schedule: VPSchedule,
    x: Tensor | Sequence[int],
    steps: int,
    generator: torch.Generator | None,
    cond: Tensor | None,
) -> Tensor:
    if not isinstance(schedule, VPSchedule):
        raise ValueError(f"schedule must be a samplers.VPSchedule, got {type(schedule).__name__}")
    schedule.check_steps(steps)
    if isinstance(x, Tensor):
        if x.ndim < 2 or not x.is_floating_point():
            raise ValueError(f"x must be a float tensor of shape (B, ...), got {tuple(x.shape)}")
        noise = x
    else:
        shape = tuple(int(s) for s in x)
        if len(shape) < 2 or any(s < 1 for s in shape):
            raise ValueError(f"shape must be (B, ...) with positive sizes, got {shape}")
        device = generator.device if generator is not None else torch.device("cpu")
        noise = torch.randn(shape, generator=generator, device=device)
    if cond is not None and cond.shape[0] != noise.shape[0]:
        raise ValueError(f"cond has batch {cond.shape[0]} but x has batch {noise.shape[0]}")
    return noise


def _noise_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _clip(x0: Tensor, clip_denoised: float | None) -> Tensor:
    return x0 if clip_denoised is None else x0.clamp(-clip_denoised, clip_denoised)


def _check_nonneg(name: str, value: float | None) -> None:
    if value is not None and not value >= 0:
        raise ValueError(f"{name} must be >= 0 (or None), got {value!r}")


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
) -> SamplerOutput:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), respaced to ``steps`` steps.

    With respacing (Nichol & Dhariwal 2021, Sec. 4) the chain visits ``schedule.timesteps(steps)``
    with ``beta'_t = 1 - alpha_bar_t / alpha_bar_prev`` and samples the posterior
    ``q(x_prev | x_t, x0_hat)`` (Ho et al. Eq. 6-7) with variance ``beta_tilde``. The last step goes
    to clean data and adds no noise. One NFE per step.
    """
    _check_nonneg("clip_denoised", clip_denoised)
    xt = _initial_noise(schedule, x, steps, generator, cond)
    model = _Eval(denoiser, cond)
    ts = schedule.timesteps(steps).tolist()
    for i, t in enumerate(ts):
        prev = ts[i + 1] if i + 1 < steps else -1
        ab_t, ab_prev = schedule.alpha_bar(t).item(), schedule.alpha_bar(prev).item()
        beta = 1.0 - ab_t / ab_prev
        eps = model(xt, t)
        x0 = _clip((xt - math.sqrt(1.0 - ab_t) * eps) / math.sqrt(ab_t), clip_denoised)
        mean = (math.sqrt(ab_prev) * beta / (1.0 - ab_t)) * x0 + (
            math.sqrt(1.0 - beta) * (1.0 - ab_prev) / (1.0 - ab_t)
        ) * xt
        var = beta * (1.0 - ab_prev) / (1.0 - ab_t)
        xt = mean + math.sqrt(var) * _noise_like(xt, generator) if prev >= 0 else mean
        if callback is not None:
            callback({"step": i, "t": t, "x": xt, "denoised": x0, "nfe": model.nfe})
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
) -> SamplerOutput:
    """DDIM (Song et al. 2021, Eq. 12) on ``schedule.timesteps(steps)``, ending at clean data.

    ``x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - s^2) eps + s z`` with
    ``s = eta * sqrt((1 - ab_prev) / (1 - ab_t)) * sqrt(1 - ab_t / ab_prev)`` (Eq. 16);
    ``eta = 0`` is the deterministic sampler, ``eta = 1`` coincides with DDPM ancestral sampling.
    One NFE per step.
    """
    _check_nonneg("eta", eta)
    _check_nonneg("clip_denoised", clip_denoised)
    xt = _initial_noise(schedule, x, steps, generator, cond)
    model = _Eval(denoiser, cond)
    ts = schedule.timesteps(steps).tolist()
    for i, t in enumerate(ts):
        prev = ts[i + 1] if i + 1 < steps else -1
        ab_t, ab_prev = schedule.alpha_bar(t).item(), schedule.alpha_bar(prev).item()
        eps = model(xt, t)
        x0 = _clip((xt - math.sqrt(1.0 - ab_t) * eps) / math.sqrt(ab_t), clip_denoised)
        if clip_denoised is not None:  # keep eps consistent with the clipped x0
            eps = (xt - math.sqrt(ab_t) * x0) / math.sqrt(1.0 - ab_t)
        sigma = eta * math.sqrt((1.0 - ab_prev) / (1.0 - ab_t) * (1.0 - ab_t / ab_prev))
        xt = math.sqrt(ab_prev) * x0 + math.sqrt(max(1.0 - ab_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            xt = xt + sigma * _noise_like(xt, generator)
        if callback is not None:
            callback({"step": i, "t": t, "x": xt, "denoised": x0, "nfe": model.nfe})
    return SamplerOutput(xt, model.nfe)


def _singlestep_orders(steps: int, order: int) -> list[int]:
    """How DPM-Solver splits an NFE budget into steps of each order (Lu et al. 2022, Sec. 3.4)."""
    if order == 3:
        k = steps // 3 + 1
        if steps % 3 == 0:
            orders = [3] * (k - 2) + [2, 1]
        elif steps % 3 == 1:
            orders = [3] * (k - 1) + [1]
        else:
            orders = [3] * (k - 1) + [2]
    elif order == 2:
        orders = [2] * (steps // 2) + ([1] if steps % 2 else [])
    else:
        orders = [1] * steps
    return orders


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
    denoise_to_zero: bool = False,
) -> SamplerOutput:
    """Singlestep DPM-Solver-1/2/3 (Lu et al. 2022, "DPM-Solver", Algorithms 1-2, Eq. 3.7-3.8).

    Noise-prediction solver of the probability-flow ODE in half-log-SNR ``lambda``. The budget of
    ``steps`` NFE is split into outer steps of order ``order`` (the "DPM-Solver-fast" scheme, Sec.
    3.4) on a grid uniform in ``lambda`` from ``t = 1`` to ``t = 1/T``; DPM-Solver-2 uses
    ``r1 = 1/2`` and DPM-Solver-3 uses ``r1 = 1/3, r2 = 2/3``. The result is ``x`` at ``t = 1/T``;
    ``denoise_to_zero`` spends one more NFE on ``x0_hat`` there. Deterministic (generator only
    draws the initial noise).
    """
    if order not in (1, 2, 3):
        raise ValueError(f"order must be one of 1, 2, 3, got {order!r}")
    xt = _initial_noise(schedule, x, steps, generator, cond)
    model = _Eval(denoiser, cond)
    orders = _singlestep_orders(steps, order)
    f64 = torch.float64

    def at(t: float) -> tuple[float, float, float]:
        tt = torch.tensor(t, dtype=f64)
        return (
            schedule.marginal_alpha(tt).item(),
            schedule.marginal_std(tt).item(),
            schedule.marginal_lambda(tt).item(),
        )

    def t_of(lamb: float) -> float:
        return schedule.inverse_lambda(torch.tensor(lamb, dtype=f64)).item()

    def eps_at(x_: Tensor, t: float) -> Tensor:
        return model(x_, schedule.continuous_to_model_time(torch.tensor(t, dtype=f64)).item())

    lam_T, lam_0 = at(1.0)[2], at(schedule.t_min)[2]
    lambdas = torch.linspace(lam_T, lam_0, len(orders) + 1, dtype=f64).tolist()
    times = [1.0] + [t_of(lam) for lam in lambdas[1:-1]] + [schedule.t_min]
    x0 = xt
    for i, k in enumerate(orders):
        s, t = times[i], times[i + 1]
        a_s, sig_s, lam_s = at(s)
        a_t, sig_t, lam_t = at(t)
        h = lam_t - lam_s
        eps_s = eps_at(xt, s)
        phi = math.expm1(h)
        base = (a_t / a_s) * xt - sig_t * phi * eps_s
        if k == 1:
            x_next = base
        elif k == 2:
            r1 = 0.5
            s1 = t_of(lam_s + r1 * h)
            a1, sig1, _ = at(s1)
            u1 = (a1 / a_s) * xt - sig1 * math.expm1(r1 * h) * eps_s
            x_next = base - (sig_t / (2 * r1)) * phi * (eps_at(u1, s1) - eps_s)
        else:
            r1, r2 = 1.0 / 3.0, 2.0 / 3.0
            s1, s2 = t_of(lam_s + r1 * h), t_of(lam_s + r2 * h)
            a1, sig1, _ = at(s1)
            a2, sig2, _ = at(s2)
            u1 = (a1 / a_s) * xt - sig1 * math.expm1(r1 * h) * eps_s
            d1 = eps_at(u1, s1) - eps_s
            phi_r2 = math.expm1(r2 * h)
            u2 = (
                (a2 / a_s) * xt
                - sig2 * phi_r2 * eps_s
                - sig2 * (r2 / r1) * (phi_r2 / (r2 * h) - 1.0) * d1
            )
            d2 = eps_at(u2, s2) - eps_s
            x_next = base - (sig_t / r2) * (phi / h - 1.0) * d2
        x0 = (xt - sig_s * eps_s) / a_s
        xt = x_next
        if callback is not None:
            callback({"step": i, "t": s, "x": xt, "denoised": x0, "nfe": model.nfe})
    if denoise_to_zero:
        a0, sig0, _ = at(schedule.t_min)
        xt = (xt - sig0 * eps_at(xt, schedule.t_min)) / a0
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
    clip_denoised: float | None = None,
) -> SamplerOutput:
    """DPM-Solver++(2M) (Lu et al. 2022b, "DPM-Solver++", Algorithm 2), data prediction.

    Multistep second order on ``schedule.timesteps(steps)`` ending at clean data (sigma = 0):
    ``x_i = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i (e^{-h_i} - 1) D_i`` with
    ``D_i = (1 + 1/(2 r_i)) x0_{i-1} - 1/(2 r_i) x0_{i-2}``, ``r_i = h_{i-1} / h_i``. The first step
    and the final step (to sigma = 0, where ``h`` is infinite) are first order, as in diffusers'
    ``DPMSolverMultistepScheduler`` with ``final_sigmas_type="zero"``. One NFE per step.
    """
    _check_nonneg("clip_denoised", clip_denoised)
    xt = _initial_noise(schedule, x, steps, generator, cond)
    model = _Eval(denoiser, cond)
    ts = schedule.timesteps(steps).tolist()
    prev_x0: Tensor | None = None
    prev_h: float | None = None
    for i, t in enumerate(ts):
        ab_t = schedule.alpha_bar(t).item()
        a_s, sig_s = math.sqrt(ab_t), math.sqrt(1.0 - ab_t)
        eps = model(xt, t)
        x0 = _clip((xt - sig_s * eps) / a_s, clip_denoised)
        nxt = ts[i + 1] if i + 1 < steps else -1
        if nxt < 0:
            xt = x0  # sigma_next = 0: the first-order step lands exactly on x0_hat
            h = math.inf
        else:
            ab_n = schedule.alpha_bar(nxt).item()
            a_t, sig_t = math.sqrt(ab_n), math.sqrt(1.0 - ab_n)
            h = (math.log(a_t) - math.log(sig_t)) - (math.log(a_s) - math.log(sig_s))
            d = x0
            if prev_x0 is not None and prev_h is not None:
                r = prev_h / h
                d = (1.0 + 0.5 / r) * x0 - (0.5 / r) * prev_x0
            xt = (sig_t / sig_s) * xt - a_t * math.expm1(-h) * d
        prev_x0, prev_h = x0, h
        if callback is not None:
            callback({"step": i, "t": t, "x": xt, "denoised": x0, "nfe": model.nfe})
    return SamplerOutput(xt, model.nfe)


SAMPLERS: dict[str, Callable[..., SamplerOutput]] = {
    "ddpm": ddpm,
    "ddim": ddim,
    "dpm-solver": dpm_solver,
    "dpm-solver++": dpm_solver_pp,
}


def available() -> list[str]:
    """Names of every registered sampler."""
    return list(SAMPLERS)


def get_sampler(name: str) -> Callable[..., SamplerOutput]:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid choices: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def sample(
    name: str,
    denoiser: Denoiser,
    schedule: VPSchedule,
    x: Tensor | Sequence[int],
    steps: int,
    **kwargs: Any,
) -> SamplerOutput:
    """Run the sampler registered as ``name`` (see :data:`SAMPLERS`)."""
    return get_sampler(name)(denoiser, schedule, x, steps, **kwargs)
