"""The variance-preserving noise schedule shared by every sampler.

A discrete VP schedule (Ho et al. 2020) with ``T`` training timesteps ``n = 0 .. T-1`` defines
``alpha_bar[n] = prod_{k<=n} (1 - beta[k])`` and the marginal ``q(x_n | x_0) = N(alpha_n x_0,
sigma_n^2 I)`` with ``alpha_n = sqrt(alpha_bar[n])`` and ``sigma_n = sqrt(1 - alpha_bar[n])``.

The continuous view follows DPM-Solver's ``NoiseScheduleVP('discrete')`` (Lu et al. 2022,
App. D): continuous time ``t_n = (n + 1) / T`` in ``(0, 1]`` and ``log alpha(t)`` piecewise-linear
between the grid points, so solvers can evaluate any ``t`` and invert the half-log-SNR
``lambda = log(alpha / sigma)``. Model time (what the denoiser receives) is the discrete index
``n = t * T - 1``, a float that is fractional between grid points.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["SCHEDULES", "VPSchedule", "make_schedule"]


def _linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 2e-2) -> Tensor:
    """Ho et al. 2020, Sec. 4: betas linear from 1e-4 to 0.02 at T = 1000 (rescaled for other T)."""
    scale = 1000.0 / T
    return torch.linspace(scale * beta_start, scale * beta_end, T, dtype=torch.float64)


def _cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal 2021, Eq. 17: alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) * pi / 2)."""
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = 1 - f[1:] / f[:-1]
    return betas.clamp(max=max_beta)


SCHEDULES: dict[str, Callable[[int], Tensor]] = {
    "linear": _linear_betas,
    "cosine": _cosine_betas,
}


class VPSchedule:
    """A discrete VP noise schedule with DPM-Solver's continuous-time interpolation.

    All tables are float64 on the CPU; the ``marginal_*`` methods accept tensors on any device
    and return the same dtype and device as their input.
    """

    def __init__(self, betas: Tensor, name: str = "custom") -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() < 2:
            raise ValueError(f"a schedule needs at least 2 timesteps, got {betas.numel()}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("every beta must lie in (0, 1)")
        self.name = name
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.T = int(betas.numel())
        # DPM-Solver's grid: t_n = (n + 1) / T and log alpha at each grid point.
        self._t_grid = torch.linspace(1.0 / self.T, 1.0, self.T, dtype=torch.float64)
        self._log_alpha_grid = 0.5 * torch.log(self.alphas_cumprod)

    @classmethod
    def from_name(cls, name: str, T: int = 1000) -> VPSchedule:
        """The named schedule (:data:`SCHEDULES`) with ``T`` timesteps."""
        return make_schedule(name, T)

    def __repr__(self) -> str:
        return f"VPSchedule(name={self.name!r}, T={self.T})"

    # ----- discrete index -----
    def alpha_bar(self, n: Tensor | int) -> Tensor:
        """alpha_bar at integer timesteps ``n``; ``n = -1`` means clean data (alpha_bar = 1)."""
        n = torch.as_tensor(n, dtype=torch.long)
        if bool(((n < -1) | (n >= self.T)).any()):
            raise ValueError(f"timesteps must lie in [-1, {self.T - 1}], got {n.tolist()}")
        padded = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])
        return padded[n + 1]

    def timesteps(self, steps: int) -> Tensor:
        """``steps`` integer timesteps, descending from ``T - 1``, evenly spaced ('trailing').

        ``t_i = round(T - i * T / steps) - 1``, the spacing recommended by Lin et al. 2024
        ("Common diffusion noise schedules and sample steps are flawed", Table 2) because the first
        step starts from the last training timestep. Each sampler ends at clean data (index -1).
        """
        self.check_steps(steps)
        ts = torch.round(torch.arange(self.T, 0, -self.T / steps, dtype=torch.float64)) - 1
        return ts[:steps].long()

    def check_steps(self, steps: int) -> None:
        """A ``ValueError`` unless ``steps`` is an int in [1, T]."""
        if not isinstance(steps, int) or isinstance(steps, bool):
            raise ValueError(f"steps must be an int in [1, {self.T}], got {steps!r}")
        if not 1 <= steps <= self.T:
            raise ValueError(f"steps must be in [1, {self.T}] (the schedule's T), got {steps}")

    # ----- continuous time (DPM-Solver) -----
    def marginal_log_mean_coeff(self, t: Tensor) -> Tensor:
        """log alpha(t), piecewise-linear in t between the discrete grid points."""
        return _interp(t, self._t_grid, self._log_alpha_grid)

    def log_alpha_slope(self, t: float) -> float:
        """``d log alpha / dt`` at continuous ``t`` (the VP drift ``f(t)``; ``beta(t) = -2 f(t)``):
        the slope of the grid segment that ends at or after ``t``."""
        tt = torch.tensor([float(t)], dtype=torch.float64)
        i = int(torch.searchsorted(self._t_grid, tt).clamp(1, self.T - 1))
        dt = (self._t_grid[i] - self._t_grid[i - 1]).item()
        return (self._log_alpha_grid[i] - self._log_alpha_grid[i - 1]).item() / dt

    def marginal_alpha(self, t: Tensor) -> Tensor:
        """alpha(t) = exp(log alpha(t)) at continuous ``t``."""
        return torch.exp(self.marginal_log_mean_coeff(t))

    def marginal_std(self, t: Tensor) -> Tensor:
        """sigma(t) = sqrt(1 - alpha(t)^2) at continuous ``t``."""
        return torch.sqrt(1.0 - torch.exp(2.0 * self.marginal_log_mean_coeff(t)))

    def marginal_lambda(self, t: Tensor) -> Tensor:
        """Half log-SNR lambda(t) = log alpha(t) - log sigma(t)."""
        log_mean = self.marginal_log_mean_coeff(t)
        log_std = 0.5 * torch.log(1.0 - torch.exp(2.0 * log_mean))
        return log_mean - log_std

    def inverse_lambda(self, lamb: Tensor) -> Tensor:
        """The continuous time t with lambda(t) = lamb (lambda is decreasing in t)."""
        log_alpha = -0.5 * torch.logaddexp(torch.zeros_like(lamb), -2.0 * lamb)
        return _interp(
            log_alpha, torch.flip(self._log_alpha_grid, [0]), torch.flip(self._t_grid, [0])
        )

    def continuous_to_model_time(self, t: Tensor) -> Tensor:
        """Continuous t in [1/T, 1] -> the model's (fractional) discrete timestep in [0, T-1]."""
        return t * self.T - 1.0

    @property
    def t_min(self) -> float:
        """The smallest continuous time, 1 / T (training timestep 0)."""
        return 1.0 / self.T


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation of (xp, fp), xp increasing, extrapolating at both ends."""
    dtype, device = x.dtype if x.is_floating_point() else torch.float64, x.device
    xp = xp.to(device=device, dtype=torch.float64)
    fp = fp.to(device=device, dtype=torch.float64)
    xd = x.to(torch.float64)
    idx = torch.searchsorted(xp, xd.contiguous()).clamp(1, xp.numel() - 1)
    x0, x1 = xp[idx - 1], xp[idx]
    y0, y1 = fp[idx - 1], fp[idx]
    out = y0 + (xd - x0) * (y1 - y0) / (x1 - x0)
    return out.to(dtype)


def make_schedule(name: str = "linear", T: int = 1000) -> VPSchedule:
    """Build a named schedule; ``name`` is one of ``SCHEDULES``."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid choices: {', '.join(SCHEDULES)}")
    if not isinstance(T, int) or T < 2:
        raise ValueError(f"T must be an int >= 2, got {T!r}")
    return VPSchedule(SCHEDULES[name](T), name=name)
