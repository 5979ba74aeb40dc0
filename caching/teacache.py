"""TeaCache as its authors run it (Liu et al. 2024, "Timestep Embedding Tells: It's Time to
Cache for Video Diffusion Model", Sec. 3.3-3.4; the official ``teacache_*`` loops).

Once per call, for the whole batch: the relative L1 change of the timestep-modulated input
since the previous call, rescaled by a polynomial fitted for the model (output change against
input change over a few full runs), is added to an accumulator; while the sum stays below the
threshold the call reuses the cached residual (final hidden state - embedded input) and only
embedding and readout run; otherwise it computes and the accumulator resets. The first call
of a run and its last (``calls``, where known) always compute. The per-row rule the suite had
first stays as ``teacache`` (:class:`caching.policies.TeaCache`).

The signal (option ``signal``, :data:`SIGNALS`): ``"embed"`` (the default), the model's embedded
input (``embed(x, t, cond).h``; on U-ViT it holds the time token beside the patch tokens, the
closest analogue of the modulated input of an adaLN model; on a DiT only the patch embedding);
``"modulated"``, upstream's: block 0's timestep-modulated input, from a model with the
``cache_signal`` capability (:mod:`blockloop.model`; the DiT and PixArt adapters), its FLOPs
counted every call. ``branches=2`` decides the two halves of a classifier-free-guidance batch
separately (upstream keeps one state per branch).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

import samplers
from blockloop.model import BlockState, LayerwiseModel, require
from caching.policies import ResidualCache
from samplers import ClassifierFreeGuidance, VPSchedule

__all__ = ["SIGNALS", "TeaCacheBatch", "fit_rescale", "recorded_runs", "rel_l1"]

IDENTITY = (1.0, 0.0)  # no rescaling: the polynomial x
SIGNALS = ("embed", "modulated")  # what the rule compares between calls (module docstring)


def _check_signal(model: LayerwiseModel, signal: str) -> None:
    """A ValueError unless ``model`` can give ``signal`` (the modulated one needs
    ``cache_signal``)."""
    if signal == "modulated":
        require(model, ("cache_signal",), "teacache-batch with signal 'modulated'")


def _signal(model: LayerwiseModel, state: BlockState, signal: str) -> Tensor:
    """The input the rule compares: the embedded tokens or block 0's modulated input."""
    return state.h if signal == "embed" else model.cache_signal(state)


def rel_l1(now: Tensor, prev: Tensor) -> float:
    """mean |now - prev| / mean |prev| over the whole tensor (upstream's signal)."""
    return float((now - prev).abs().float().mean() / prev.abs().float().mean().clamp_min(1e-12))


class TeaCacheBatch(ResidualCache):
    """Upstream TeaCache: one decision per call (per guidance branch), polynomial rescaling
    (``coefficients``, highest degree first as ``numpy.poly1d``; the pipeline fits them with
    :func:`fit_rescale` when unset), first and last calls computed, accumulator reset on
    compute. Knob: the threshold on the accumulated rescaled change (upstream: 0.1-0.6)."""

    name = "teacache-batch"
    knob_name = "threshold"
    knob_range = (0.0, 10.0)
    knob_default = 0.1
    needs_fit = True  # coefficients fitted per model x sampler x steps (bench.pipeline)
    fitted = ("coefficients",)
    fit_kind = "teacache-fit"
    fit_inputs = ("signal",)

    def __init__(
        self,
        knob: float | None = None,
        coefficients: tuple[float, ...] | list[float] = IDENTITY,
        calls: int | None = None,
        branches: int = 1,
        signal: str = "embed",
    ) -> None:
        if signal not in SIGNALS:
            raise ValueError(
                f"teacache-batch: unknown signal {signal!r}; valid choices: {', '.join(SIGNALS)}"
            )
        coefficients = tuple(float(c) for c in coefficients)
        if not coefficients or not all(np.isfinite(coefficients)):
            raise ValueError(
                f"teacache-batch: coefficients must be finite numbers, got {coefficients}"
            )
        if calls is not None and (
            isinstance(calls, bool) or not isinstance(calls, int) or calls < 1
        ):
            raise ValueError(f"teacache-batch: calls must be an integer >= 1, got {calls!r}")
        if branches not in (1, 2):
            raise ValueError(f"teacache-batch: branches must be 1 or 2, got {branches!r}")
        self.rescale = np.poly1d(coefficients)
        self.calls, self.branches, self.signal = calls, branches, signal
        super().__init__(knob)

    def bind(self, model: LayerwiseModel, costs) -> None:
        """:meth:`CachePolicy.bind`, and the ``cache_signal`` capability for ``"modulated"``."""
        _check_signal(model, self.signal)
        super().bind(model, costs)

    @staticmethod
    def fit(model, schedule, sampler: str, steps: int, **run: Any) -> tuple[dict, dict]:
        """The rescaling polynomial (:func:`fit_rescale`, on ``run["signal"]``) as the
        ``coefficients`` option."""
        coefficients, info = fit_rescale(model, schedule, sampler, steps, **run)
        return {"coefficients": coefficients}, info

    @property
    def coefficients(self) -> tuple[float, ...]:
        """The rescaling polynomial's coefficients, highest degree first (the fitted option)."""
        return tuple(float(c) for c in self.rescale.c)

    def __repr__(self) -> str:
        signal = "" if self.signal == "embed" else f", signal={self.signal!r}"
        return f"TeaCacheBatch(threshold={self.knob:g}, coefficients={self.coefficients}{signal})"

    def plan(self, state: BlockState) -> Tensor | None:
        """Add the rescaled relative L1 change of the signal to each guidance branch's sum;
        a branch below ``threshold`` is served wholly from the cache (the first and last calls are
        computed). Returns the mask of served rows, or None when no row is served."""
        h0 = _signal(self.model, state, self.signal)
        if self.signal != "embed":
            self.plan_flops = self.costs.signal * h0.shape[0]
        halves = h0.chunk(self.branches) if h0.shape[0] % self.branches == 0 else (h0,)
        key = "prev" if self.signal == "embed" else "signal"  # "prev": h, the residual's shape
        prev = self.store.get(key)
        self.store["prev"], self.store[key] = state.h, h0
        acc = self.store.setdefault("acc", [0.0] * len(halves))
        forced = self.call == 0 or (self.calls is not None and self.call >= self.calls - 1)
        serve = []
        for b, half in enumerate(halves):
            if forced or prev is None or "residual" not in self.store:
                acc[b], reuse = 0.0, False
            else:
                acc[b] += float(self.rescale(rel_l1(half, prev.chunk(len(halves))[b])))
                reuse = acc[b] < self.knob
                acc[b] = acc[b] if reuse else 0.0
            serve.append(torch.full((half.shape[0],), reuse, device=h0.device))
        mask = torch.cat(serve)
        return mask if bool(mask.any()) else None


class _Signals:
    """A denoiser that runs ``model`` whole and records, per call, the signal (``signal``, of
    :data:`SIGNALS`) and the output (the pairs :func:`fit_rescale` fits)."""

    def __init__(self, model: LayerwiseModel, signal: str = "embed") -> None:
        self.model, self.signal, self.inputs, self.outputs = model, signal, [], []

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        state = self.model.embed(x, t, cond)
        self.inputs.append(_signal(self.model, state, self.signal).float().cpu())
        for i in range(self.model.depth):
            self.model.run_block(i, state)
        eps = self.model.readout(state)
        self.outputs.append(eps.float().cpu())
        return eps


def recorded_runs(model: LayerwiseModel, schedule: VPSchedule, sampler: str, steps: int,
                  recorder: Callable[[LayerwiseModel], Any], **run: Any) -> list[Any]:  # fmt: skip
    """Full sampling runs of ``model`` for a fitted cache's options, one ``recorder(model)``
    denoiser per run (under guidance when ``run["guidance"]`` is set): ``run["n"] //
    run["batch"]`` runs of ``run["batch"]`` samples, seeded by ``run["seed"]``, with the cell's
    ``cond`` and ``sampler_kw``. Returns the recorders."""
    dev = next(model.parameters()).device
    recorders = []
    for b in range(max(1, run["n"] // run["batch"])):
        rec = recorder(model)
        denoiser = rec
        if run.get("guidance") is not None:
            denoiser = ClassifierFreeGuidance(rec, run["guidance"], model.null_cond())
        gen = torch.Generator(device=dev).manual_seed(run["seed"] * 1000 + b)
        shape = (run["batch"], *model.input_shape)
        samplers.sample(sampler, denoiser, schedule, shape, steps, generator=gen,
                        cond=run.get("cond"), **run.get("sampler_kw", {}))  # fmt: skip
        recorders.append(rec)
    return recorders


@torch.inference_mode()
def fit_rescale(
    model: LayerwiseModel, schedule: VPSchedule, sampler: str, steps: int, **run: Any
) -> tuple[tuple[float, ...], dict[str, Any]]:
    """Fit TeaCache's rescaling polynomial (degree 4, as upstream) of ``model`` for ``sampler``
    at ``steps``: full runs of ``run["n"]`` samples in batches of ``run["batch"]`` (seeded by
    ``run["seed"]``; ``guidance`` / ``cond`` / ``sampler_kw`` as the cell samples), the relative
    L1 change of the output between consecutive calls against that of the signal
    (``run["signal"]``, default ``"embed"``), ``numpy.polyfit``. Returns (coefficients, info:
    ``calls`` per run and what was fitted on)."""
    xs, ys = [], []
    signal = run.pop("signal", "embed")
    _check_signal(model, signal)
    record = functools.partial(_Signals, signal=signal)
    for rec in recorded_runs(model, schedule, sampler, steps, record, **run):
        for k in range(1, len(rec.inputs)):
            xs.append(rel_l1(rec.inputs[k], rec.inputs[k - 1]))
            ys.append(rel_l1(rec.outputs[k], rec.outputs[k - 1]))
    coefficients = tuple(float(c) for c in np.polyfit(xs, ys, 4))
    calls = len(rec.inputs)  # denoiser calls per sampling run: the last one always computes
    return coefficients, {"calls": calls, "pairs": len(xs), "input_change_max": float(max(xs))}
