"""Calibrate an exit policy's knob to a target FLOP ratio.

Peers report one threshold per dataset; comparing policies fairly needs them at *equal* cost.
Given a target ratio (executed FLOPs / full-model FLOPs over a sampling run), the knob is found by
bisection on a small calibration batch, using the knob's declared range and direction; integer
knobs are searched exhaustively. The achieved ratio is reported, since exits are discrete and a
target may fall between two achievable ratios.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

import samplers
from adaptive.policies import POLICIES, ExitSpec, make_policy
from blockloop.executor import EarlyExitDenoiser
from blockloop.model import LayerwiseModel
from caching import CacheSpec
from samplers import ClassifierFreeGuidance, VPSchedule

__all__ = [
    "Calibration",
    "CalibrationRun",
    "calibrate",
    "check_target",
    "measure",
    "search_knob",
]

log = logging.getLogger(__name__)


@dataclass
class Calibration:
    """The result of a calibration: ``policy`` (the exit or cache policy whose knob was tuned)
    at the target FLOP ratio ``target``, the ``knob`` found (None for a knobless policy), the FLOP
    ratio it ``achieved``, its mean share of blocks run (``layer_ratio``) and every
    (knob, FLOP ratio) evaluated, in order."""

    policy: str
    target: float
    knob: float | None
    achieved: float
    layer_ratio: float
    history: list[tuple[float, float]] = field(default_factory=list)  # (knob, flop ratio)


def check_target(target: float) -> float:
    """The one check of a target FLOP ratio: a number in (0, 1]. Returns it."""
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise ValueError(f"target FLOP ratio must be in (0, 1], got {target!r}")
    return float(target)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@dataclass(frozen=True)
class CalibrationRun:
    """The sampling pass a knob is measured on. ``sampler_kw`` and ``autocast`` must match what
    the evaluation uses (e.g. ``clip_denoised``, bf16): exit decisions depend on the trajectory
    and the numerics, so a knob calibrated on other trajectories does not transfer. With
    ``guidance`` (conditional models) the batch is sampled with classifier-free guidance, its
    conditions ``cond`` or, for a class-conditional model, the classes in turn; ``paired`` makes
    cond/uncond rows exit together. The seed is distinct from evaluation seeds by default."""

    sampler: str = "ddim"
    steps: int = 20
    n: int = 64
    seed: int = 1234
    sampler_kw: Mapping[str, Any] | None = None
    guidance: float | None = None
    paired: bool = False
    autocast: torch.dtype | None = None
    cond: torch.Tensor | None = None


@torch.inference_mode()
def measure(
    model: LayerwiseModel,
    schedule: VPSchedule,
    exit: ExitSpec | str,
    run: CalibrationRun = CalibrationRun(),
    *,
    cache: CacheSpec | None = None,
    executor: EarlyExitDenoiser | None = None,
) -> EarlyExitDenoiser:
    """Run one sampling pass (``run``) with the exit policy ``exit`` and the step-level cache
    ``cache`` (:mod:`caching`); the returned executor holds the ratios. ``executor``: an
    executor of this model whose cost model is reused (calibration runs many passes)."""
    policy = _exit_spec(exit).build()
    cp = None if cache is None else cache.build()
    if executor is None:
        ex = EarlyExitDenoiser(model, policy, schedule.T, paired=run.paired, cache=cp)
    else:
        ex = executor.with_policy(policy, cache=cp)
    shape = (run.n, *model.input_shape)
    dev = next(model.parameters()).device
    denoiser, cond = ex, run.cond
    if run.guidance is not None:
        null = model.null_cond()
        if null is None:
            raise ValueError("guidance needs a conditional model (classes or text)")
        denoiser = ClassifierFreeGuidance(ex, run.guidance, null)
        if cond is None:
            if not model.num_classes:
                raise ValueError("a text-conditional model calibrates on given prompts: pass cond")
            cond = torch.arange(run.n, device=dev) % model.num_classes
    gen = torch.Generator(device=dev).manual_seed(run.seed)
    with _autocast(dev, run.autocast):
        samplers.sample(
            run.sampler,
            denoiser,
            schedule,
            shape,
            run.steps,
            generator=gen,
            cond=cond,
            **(run.sampler_kw or {}),
        )
    return ex


def _exit_spec(exit: ExitSpec | str) -> ExitSpec:
    return ExitSpec(exit) if isinstance(exit, str) else exit


def search_knob(
    policy_name: str | type,
    target: float,
    run: Callable[[float | None], tuple[float, float]],
    depth: int,
    *,
    iters: int = 14,
    tol: float = 0.005,
) -> Calibration:
    """The knob of ``policy_name`` whose ``run(knob) -> (FLOP ratio, layer ratio)`` is closest
    to ``target``: bisection over the knob's declared range in its declared direction (stopping
    within ``tol``), or every block index for an integer knob (below ``depth``). ``run`` is any
    measurement: a sampling pass (:func:`calibrate`) or one batched call (the throughput
    script). ``policy_name`` may also be a class declaring the same knob attributes (a cache
    policy of :mod:`caching`)."""
    if isinstance(policy_name, str):
        if policy_name not in POLICIES:
            raise ValueError(
                f"unknown exit policy {policy_name!r}; valid choices: {', '.join(POLICIES)}"
            )
        cls = POLICIES[policy_name]
    else:
        cls, policy_name = policy_name, policy_name.name
    check_target(target)
    history: list[tuple[float | None, float, float]] = []

    def ratio(knob: float | None) -> float:
        history.append((knob, *run(knob)))
        return history[-1][1]

    if cls.knob_name is None:
        ratio(None)
        _, achieved, layer_ratio = history[0]
        return Calibration(policy_name, target, None, achieved, layer_ratio)
    if cls.integer_knob:
        lo, hi = cls.knob_range
        for k in range(int(lo), min(int(hi), depth - 1) + 1):
            ratio(k)
    else:
        _bisect(cls, target, ratio, iters, tol)
    knob, achieved, layer_ratio = min(history, key=lambda h: abs(h[1] - target))
    # Blocks are counted as run (1..depth), the numbering of every figure and table.
    log.info(
        "calibrated %s to FLOP ratio %.3f: %s=%.4g gives %.3f (%.2f of %d blocks run)",
        policy_name,
        target,
        cls.knob_name,
        knob,
        achieved,
        layer_ratio * depth,
        depth,
    )
    return Calibration(
        policy_name, target, knob, achieved, layer_ratio, [(k, r) for k, r, _ in history]
    )


def _bisect(cls, target: float, ratio: Callable[[float], float], iters: int, tol: float) -> None:
    """Bisect ``cls``'s continuous knob range for ``ratio(knob) == target`` (``ratio`` records
    every evaluation): f(knob) is monotone with sign ``knob_direction``, and [a, b] keeps
    bracketing the target; stops within ``tol`` or after ``iters`` evaluations."""
    a, b = (float(x) for x in cls.knob_range)
    for _ in range(iters):
        mid = 0.5 * (a + b)
        r = ratio(mid)
        if abs(r - target) <= tol:
            return
        if (r < target) == (cls.knob_direction > 0):
            a = mid
        else:
            b = mid


def calibrate(
    model: LayerwiseModel,
    schedule: VPSchedule,
    exit: ExitSpec | str,
    target: float,
    *,
    cache: CacheSpec | None = None,
    run: CalibrationRun = CalibrationRun(),
    iters: int = 14,
    tol: float = 0.005,
) -> Calibration:
    """Find the knob whose FLOP ratio on the calibration pass ``run`` is closest to ``target``.

    The knob tuned is the one the specs leave open: with a step-level ``cache`` whose knob is
    None, the cache's (the exit policy runs with ``exit.knob``); otherwise the exit policy's
    (the cache keeps its knob). The ratio is that of the whole denoiser, exits and cache
    together. The model's cost model is measured once. (:func:`search_knob` checks the policy
    and the target before any pass runs.)
    """
    exit = _exit_spec(exit)
    base = EarlyExitDenoiser(model, make_policy("full"), schedule.T, paired=run.paired)
    if cache is not None and cache.knob is None:

        def run_cache(k: float | None) -> tuple[float, float]:
            ex = measure(model, schedule, exit, run, cache=cache.with_knob(k), executor=base)
            return ex.flop_ratio, ex.layer_ratio

        cls = cache.policy_class
        return search_knob(cls, target, run_cache, model.depth, iters=iters, tol=tol)

    def run_exit(k: float | None) -> tuple[float, float]:
        ex = measure(model, schedule, exit.with_knob(k), run, cache=cache, executor=base)
        return ex.flop_ratio, ex.layer_ratio

    return search_knob(exit.name, target, run_exit, model.depth, iters=iters, tol=tol)
