"""Time grids: where a sampler evaluates the denoiser, shared by every sampler.

A grid is a descending list of :class:`Point` s from the noisiest point to the *end point*. A
solver with ``steps`` function evaluations walks ``steps`` intervals of it (multistep solvers
evaluate at every point but the last; singlestep ones pick outer points, see
:func:`singlestep_grid`).

Spacings (``SPACINGS``):

- Discrete, on the integer training timesteps, as Lin et al. 2024 ("Common diffusion noise
  schedules and sample steps are flawed", Table 2) and diffusers' ``DDIMScheduler`` define them:
  ``trailing`` (``round(T - i T / n) - 1``, starts at ``T - 1``), ``leading``
  (``i * (T // n)``, never reaches ``T - 1``), ``linspace`` (``round(linspace(0, T - 1, n))``,
  ends at timestep 0). diffusers' multistep schedulers (``DPMSolverMultistepScheduler``,
  ``UniPCMultistepScheduler``) define ``linspace`` / ``leading`` differently (``n + 1`` points with
  the last dropped); pass their timesteps explicitly to reproduce those grids.
- Continuous, on DPM-Solver's interpolated schedule (Lu et al. 2022, App. D; the official
  ``get_time_steps``): ``logSNR`` (uniform in the half-log-SNR ``lambda``, the official default),
  ``time-uniform`` and ``time-quadratic`` (uniform in ``t`` and in ``sqrt(t)``), from ``t = 1`` to
  ``t = 1 / T``. Model times are then fractional.

End points (``ENDS``): ``zero`` ends at clean data (``sigma = 0``); the last step is the
first-order jump to the current ``x0`` estimate, which costs no extra evaluation. ``eps`` stops at
the first training timestep (``t = 1 / T``, ``sigma`` about 0.01 for the linear schedule), as the
official DPM-Solver does with ``denoise_to_zero=False`` and diffusers with
``final_sigmas_type="sigma_min"`` / ``set_alpha_to_one=False``. On a continuous spacing ``zero``
spends the last of the ``steps`` evaluations at ``t = 1 / T`` to jump to clean data (the
official ``denoise_to_zero``, inside the budget instead of one evaluation more).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from samplers.schedule import VPSchedule

__all__ = [
    "CONTINUOUS",
    "DISCRETE",
    "ENDS",
    "SPACINGS",
    "Point",
    "check_spacing",
    "clean_point",
    "continuous_point",
    "custom_grid",
    "discrete_point",
    "discrete_timesteps",
    "singlestep_grid",
    "time_grid",
]

DISCRETE = ("trailing", "leading", "linspace")
CONTINUOUS = ("logSNR", "time-uniform", "time-quadratic")
SPACINGS = DISCRETE + CONTINUOUS
ENDS = ("zero", "eps")


@dataclass(frozen=True)
class Point:
    """One grid point: the denoiser's input time and the marginal's coefficients there.

    ``time`` is continuous time in ``(0, 1]`` (0 for clean data), ``model_t`` the (possibly
    fractional) training timestep the denoiser receives (-1 for clean data), ``alpha`` /
    ``sigma`` the marginal's mean and noise scales, ``alpha_bar = alpha^2`` (the discrete table's
    value at integer timesteps) and ``lam = log(alpha / sigma)`` (``inf`` for clean data).
    """

    time: float
    model_t: float
    alpha: float
    sigma: float
    lam: float
    alpha_bar: float

    @property
    def clean(self) -> bool:
        """Whether the point is clean data (sigma = 0)."""
        return self.sigma == 0.0


def clean_point() -> Point:
    """The clean-data end of a grid: time 0, model time -1, alpha 1, sigma 0."""
    return Point(0.0, -1.0, 1.0, 0.0, math.inf, 1.0)


def discrete_point(schedule: VPSchedule, n: int) -> Point:
    """The training timestep ``n`` with the discrete table's exact ``alpha_bar[n]``."""
    if n < 0:
        return clean_point()
    ab = schedule.alpha_bar(n).item()
    a, s = math.sqrt(ab), math.sqrt(1.0 - ab)
    return Point((n + 1) / schedule.T, float(n), a, s, math.log(a) - math.log(s), ab)


def continuous_point(schedule: VPSchedule, t: float) -> Point:
    """Continuous time ``t`` on DPM-Solver's interpolated schedule."""
    tt = torch.tensor(t, dtype=torch.float64)
    a = schedule.marginal_alpha(tt).item()
    return Point(
        float(t),
        schedule.continuous_to_model_time(tt).item(),
        a,
        schedule.marginal_std(tt).item(),
        schedule.marginal_lambda(tt).item(),
        a * a,
    )


def check_spacing(spacing: str, end: str) -> None:
    """A ``ValueError`` unless ``spacing`` is in :data:`SPACINGS` and ``end`` in :data:`ENDS`."""
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; valid choices: {', '.join(SPACINGS)}")
    if end not in ENDS:
        raise ValueError(f"unknown end {end!r}; valid choices: {', '.join(ENDS)}")


def discrete_timesteps(schedule: VPSchedule, n: int, spacing: str) -> list[int]:
    """``n`` descending integer timesteps of a discrete spacing (Lin et al. 2024, Table 2)."""
    T = schedule.T
    schedule.check_steps(n)
    if spacing == "trailing":
        return schedule.timesteps(n).tolist()
    if spacing == "leading":
        return [i * (T // n) for i in range(n - 1, -1, -1)]
    if spacing == "linspace":
        return torch.linspace(0, T - 1, n, dtype=torch.float64).round().long().flip(0).tolist()
    raise ValueError(f"{spacing!r} is not a discrete spacing; valid choices: {', '.join(DISCRETE)}")


def _continuous_times(schedule: VPSchedule, n: int, spacing: str) -> list[float]:
    """``n + 1`` descending continuous times from ``t = 1`` to ``t = 1 / T`` (official
    ``get_time_steps``)."""
    f64, t_T, t_0 = torch.float64, 1.0, schedule.t_min
    if spacing == "logSNR":
        lam_T = schedule.marginal_lambda(torch.tensor(t_T, dtype=f64)).item()
        lam_0 = schedule.marginal_lambda(torch.tensor(t_0, dtype=f64)).item()
        lambdas = torch.linspace(lam_T, lam_0, n + 1, dtype=f64)
        inner = [schedule.inverse_lambda(lam).item() for lam in lambdas[1:-1]]
        return [t_T, *inner, t_0]
    if spacing == "time-uniform":
        return torch.linspace(t_T, t_0, n + 1, dtype=f64).tolist()
    if spacing == "time-quadratic":
        return (torch.linspace(t_T**0.5, t_0**0.5, n + 1, dtype=f64) ** 2).tolist()
    raise ValueError(
        f"{spacing!r} is not a continuous spacing; valid choices: {', '.join(CONTINUOUS)}"
    )


def time_grid(schedule: VPSchedule, intervals: int, spacing: str, end: str) -> list[Point]:
    """``intervals + 1`` descending points of ``spacing`` ending at ``end`` (module docstring)."""
    check_spacing(spacing, end)
    schedule.check_steps(intervals)
    if spacing in DISCRETE:
        ts = discrete_timesteps(schedule, intervals, spacing)
        return _with_end(schedule, [discrete_point(schedule, n) for n in ts], end, spacing)
    if end == "eps":
        times = _continuous_times(schedule, intervals, spacing)
    else:  # the last interval is the jump from t = 1/T to clean data
        times = [1.0] if intervals == 1 else _continuous_times(schedule, intervals - 1, spacing)
    points = [continuous_point(schedule, t) for t in times]
    return [*points, clean_point()] if end == "zero" else points


def _with_end(schedule: VPSchedule, points: list[Point], end: str, what: str) -> list[Point]:
    if end == "zero":
        return [*points, clean_point()]
    if points[-1].model_t <= 0:
        raise ValueError(
            f"the {what} grid already ends at timestep 0, so end='eps' would add a step of "
            "length zero; use end='zero'"
        )
    return [*points, discrete_point(schedule, 0)]


def custom_grid(schedule: VPSchedule, timesteps: Sequence[float], end: str) -> list[Point]:
    """A grid on explicit model times (descending, in ``[0, T - 1]``; integers use the discrete
    table, fractional ones the interpolated schedule), followed by ``end``."""
    if end not in ENDS:
        raise ValueError(f"unknown end {end!r}; valid choices: {', '.join(ENDS)}")
    ts = [float(t) for t in timesteps]
    if not ts or any(not 0 <= t <= schedule.T - 1 for t in ts):
        raise ValueError(f"timesteps must be non-empty and lie in [0, {schedule.T - 1}], got {ts}")
    if any(b >= a for a, b in itertools.pairwise(ts)):
        raise ValueError(f"timesteps must be strictly descending, got {ts}")
    points = [
        discrete_point(schedule, int(t))
        if t.is_integer()
        else continuous_point(schedule, (t + 1.0) / schedule.T)
        for t in ts
    ]
    return _with_end(schedule, points, end, "custom")


def singlestep_grid(
    schedule: VPSchedule, orders: Sequence[int], steps: int, spacing: str, end: str
) -> list[Point]:
    """Outer points of a singlestep solver whose steps have ``orders`` (summing to ``steps``).

    As the official DPM-Solver does: on ``logSNR`` the outer points are uniform in ``lambda``;
    on any other spacing they are the points of the ``steps``-interval grid at the cumulative
    sums of ``orders``, so every evaluation lands on that spacing's grid.
    """
    if spacing == "logSNR":
        return time_grid(schedule, len(orders), spacing, end)
    inner = time_grid(schedule, steps, spacing, end)
    idx = [0]
    for k in orders:
        idx.append(idx[-1] + k)
    return [inner[i] for i in idx]
