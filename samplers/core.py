"""The sampler registry: every sampler under one name, one signature (:mod:`samplers.base`).

The time grid (``spacing`` / ``end``, :mod:`samplers.grid`) and, for higher-order solvers, the
``order`` are options of every call; :func:`check_options` validates a combination up front
(what a sweep does before it runs anything).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from samplers.base import Denoiser, SamplerOutput, check_order
from samplers.ddim import ddim, ddpm
from samplers.dpm import (
    dpm_solver,
    dpm_solver_multistep,
    dpm_solver_pp,
    dpm_solver_pp_sde,
    dpm_solver_pp_singlestep,
)
from samplers.grid import time_grid
from samplers.schedule import VPSchedule, make_schedule
from samplers.sde import check_stable, euler_maruyama
from samplers.unipc import unipc

__all__ = [
    "ORDERS",
    "SAMPLERS",
    "available",
    "check_options",
    "defaults",
    "describe",
    "get_sampler",
    "sample",
]

SAMPLERS: dict[str, Callable[..., SamplerOutput]] = {
    "ddpm": ddpm,
    "ddim": ddim,
    "dpm-solver": dpm_solver,
    "dpm-solver++": dpm_solver_pp,
    "dpm-solver-multistep": dpm_solver_multistep,
    "dpm-solver++-singlestep": dpm_solver_pp_singlestep,
    "dpm-solver++-sde": dpm_solver_pp_sde,
    "unipc-bh1": functools.partial(unipc, variant="bh1"),
    "unipc-bh2": functools.partial(unipc, variant="bh2"),
    "euler-maruyama": euler_maruyama,
}

# The orders each solver has (empty: first order only, no ``order`` option).
ORDERS: dict[str, tuple[int, ...]] = {
    name: (1, 2) if name == "dpm-solver++-sde" else (1, 2, 3)
    for name in SAMPLERS
    if "order" in inspect.signature(SAMPLERS[name]).parameters
}


def available() -> list[str]:
    """Names of every registered sampler."""
    return list(SAMPLERS)


def get_sampler(name: str) -> Callable[..., SamplerOutput]:
    """The sampler ``name`` of :data:`SAMPLERS` (``ValueError`` naming the choices if unknown)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid choices: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def defaults(name: str) -> dict[str, Any]:
    """The sampler's default ``order`` (if it has one), ``spacing`` and ``end``."""
    params = inspect.signature(get_sampler(name)).parameters
    return {k: params[k].default for k in ("order", "spacing", "end") if k in params}


def describe(name: str) -> str:
    """One line: the sampler's defaults and orders (for ``--list``)."""
    d = defaults(name)
    orders = "/".join(str(k) for k in ORDERS.get(name, ()))
    order = f"order {d['order']} of {orders}, " if "order" in d else ""
    return f"{order}{d['spacing']} grid to {d['end']}"


@functools.lru_cache(maxsize=8)
def _check_schedule(name: str, T: int) -> VPSchedule:
    return make_schedule(name, T)


def check_options(
    name: str,
    steps: int,
    *,
    order: int | None = None,
    spacing: str | None = None,
    end: str | None = None,
    T: int = 1000,
    schedule: str | VPSchedule = "linear",
    **flags: bool,
) -> None:
    """Raise ``ValueError`` (naming the valid choices) unless ``name`` runs ``steps`` steps with
    these options on the named ``T``-step schedule (or this schedule); ``None`` means the
    sampler's default.
    ``flags`` are boolean options (``lower_order_final``, ``taylor_3m``) the sampler must take."""
    d = defaults(name)
    params = inspect.signature(get_sampler(name)).parameters
    takes = {**flags, **({} if order is None else {"order": order})}  # options it must have
    for option in takes:
        if option not in params:
            have = [n for n in SAMPLERS if option in inspect.signature(SAMPLERS[n]).parameters]
            raise ValueError(
                f"sampler {name!r} has no {option} option; samplers with one: {', '.join(have)}"
            )
    # A named schedule is built once per (name, T); a given one is used as it is.
    sch = schedule if isinstance(schedule, VPSchedule) else _check_schedule(schedule, T)
    sch.check_steps(steps)
    if name in ORDERS:
        k = d["order"] if order is None else order
        check_order(name, k, ORDERS[name], steps)
        if flags.get("taylor_3m") and k != 3:
            # it corrects the third-order update only: elsewhere a new key for the same run
            raise ValueError(f"taylor_3m applies to {name!r} at order 3, not order {k}")
    # time_grid names the valid spacings / ends of a bad one
    grid = time_grid(sch, steps, spacing or d["spacing"], end or d["end"])
    if name == "euler-maruyama":
        check_stable(sch, grid)


def sample(
    name: str,
    denoiser: Denoiser,
    schedule: VPSchedule,
    x: Any,
    steps: int,
    **kwargs: Any,
) -> SamplerOutput:
    """Run the sampler registered as ``name`` (see :data:`SAMPLERS`)."""
    return get_sampler(name)(denoiser, schedule, x, steps, **kwargs)
