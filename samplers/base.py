"""What every sampler shares: the denoiser contract, the output, NFE counting, the initial noise,
the time grid it walks and the order schedule of multistep solvers.

Every sampler is called as::

    out = sampler(denoiser, schedule, x, steps, generator=None, cond=None, callback=None, **opts)

- ``denoiser(x, t, cond) -> eps``: predicts the noise in ``x`` at model time ``t`` (a float tensor
  of shape ``(B,)`` holding the training timestep in ``[0, T-1]``, fractional on continuous
  grids). An early-exit executor, a pruned net and a plain net are all denoisers.
- ``schedule``: a :class:`~samplers.schedule.VPSchedule`.
- ``x``: the initial noise ``x_T`` (a tensor) or a shape, drawn from ``N(0, I)`` with ``generator``.
- ``steps``: the number of function evaluations (NFE) the sampler may spend, ``1 <= steps <= T``.
- ``spacing`` / ``end`` / ``timesteps``: the time grid (:mod:`samplers.grid`); each sampler's
  signature holds its default.
- ``callback(info)``: called after every step with ``step``, ``t``, ``x``, ``denoised`` (the
  current x0 estimate) and ``nfe`` so far; use it for traces, timing and progress bars.

It returns a :class:`SamplerOutput` with the samples and the NFE actually made.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from samplers.grid import Point, custom_grid, time_grid
from samplers.schedule import VPSchedule

__all__ = [
    "Callback",
    "Denoiser",
    "Eval",
    "SamplerOutput",
    "check_nonneg",
    "check_order",
    "clip",
    "initial_noise",
    "make_grid",
    "multistep_order",
    "noise_like",
]


class Denoiser(Protocol):
    """What a sampler calls: ``denoiser(x, t, cond) -> eps`` (module docstring)."""

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        """eps of ``x``'s shape for ``x`` (B, ...) at model times ``t`` (B,) with ``cond``."""
        ...


Callback = Callable[[dict[str, Any]], None]


@dataclass
class SamplerOutput:
    """A sampler's result: the ``samples`` and the denoiser calls made (``nfe``)."""

    samples: Tensor
    nfe: int


class Eval:
    """Calls the denoiser with a batched time tensor, checks its output, counts NFE and reports
    each finished step to the sampler's ``callback``."""

    def __init__(
        self, denoiser: Denoiser, cond: Tensor | None, callback: Callback | None = None
    ) -> None:
        self.denoiser = denoiser
        self.cond = cond
        self.callback = callback
        self.nfe = 0

    def step_done(self, step: int, t: float, x: Tensor, denoised: Tensor) -> None:
        """Call ``callback`` (if any) with the step's index, model time, result and x0 estimate."""
        if self.callback is not None:
            self.callback({"step": step, "t": t, "x": x, "denoised": denoised, "nfe": self.nfe})

    def __call__(self, x: Tensor, t: float) -> Tensor:
        """eps of ``x`` at model time ``t`` (one float for the batch); counts one NFE and raises
        ``ValueError`` unless the denoiser returned a tensor of ``x``'s shape."""
        # float64 inputs get float64 times (exactness tests); models see float32 otherwise.
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        t_batch = torch.full((x.shape[0],), float(t), device=x.device, dtype=dtype)
        eps = self.denoiser(x, t_batch, self.cond)
        if not isinstance(eps, Tensor) or eps.shape != x.shape:
            got = tuple(eps.shape) if isinstance(eps, Tensor) else type(eps).__name__
            raise ValueError(
                f"denoiser must return eps of the input's shape {tuple(x.shape)}, got {got}"
            )
        self.nfe += 1
        return eps

    def x0(self, x: Tensor, p: Point, clip_denoised: float | None = None) -> Tensor:
        """The data prediction ``(x - sigma eps) / alpha`` at ``p``, optionally clipped."""
        return clip((x - p.sigma * self(x, p.model_t)) / p.alpha, clip_denoised)


def initial_noise(
    schedule: VPSchedule,
    x: Tensor | Sequence[int],
    steps: int,
    generator: torch.Generator | None,
    cond: Tensor | None,
) -> Tensor:
    """The sampler's ``x_T``: ``x`` itself if a tensor, else N(0, I) noise of shape ``x`` drawn
    with ``generator``. Checks the schedule, ``steps`` and ``cond``'s batch (``ValueError``)."""
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


def make_grid(
    schedule: VPSchedule,
    steps: int,
    spacing: str,
    end: str,
    timesteps: Sequence[float] | None,
) -> list[Point]:
    """The ``steps``-interval grid of ``spacing``, or the explicit ``timesteps`` (one per step)."""
    if timesteps is None:
        return time_grid(schedule, steps, spacing, end)
    if len(timesteps) != steps:
        raise ValueError(f"got {len(timesteps)} timesteps for {steps} steps; pass one per step")
    return custom_grid(schedule, timesteps, end)


def noise_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise of ``x``'s shape, dtype and device, drawn with ``generator``."""
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def clip(x0: Tensor, clip_denoised: float | None) -> Tensor:
    """``x0`` clamped to [-clip_denoised, clip_denoised]; unchanged for None."""
    return x0 if clip_denoised is None else x0.clamp(-clip_denoised, clip_denoised)


def check_nonneg(name: str, value: float | None) -> None:
    """A ``ValueError`` naming ``name`` unless ``value`` is None or >= 0."""
    if value is not None and not value >= 0:
        raise ValueError(f"{name} must be >= 0 (or None), got {value!r}")


def check_order(name: str, order: int, orders: Sequence[int], steps: int) -> None:
    """``order`` is one of ``orders``, and ``steps`` leaves room for one step of that order."""
    if order not in orders or isinstance(order, bool):
        valid = ", ".join(str(k) for k in orders)
        raise ValueError(f"{name} has no order {order!r}; valid choices: {valid}")
    if steps < order:
        raise ValueError(
            f"{name} of order {order} needs at least {order} steps, got {steps}; "
            f"use more steps or a lower order"
        )


def multistep_order(
    i: int, n: int, order: int, lower_order_final: bool, to_clean: bool, below: int = 15
) -> int:
    """The order of step ``i`` of ``n`` of a multistep solver (diffusers' rule).

    Warm-up: step ``i`` has at most ``i + 1`` past evaluations. ``lower_order_final``: when
    ``n < below`` the last steps drop to order ``n - i`` (diffusers: below 15 steps for
    DPM-Solver, always for UniPC; the official DPM-Solver uses 10). A step to clean data is
    first order (``h`` is infinite there).
    """
    k = min(order, i + 1)
    if to_clean:
        return 1
    if lower_order_final and n < below:
        k = min(k, n - i)
    return k
