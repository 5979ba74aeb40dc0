"""MagCache (Ma et al. 2025, "MagCache: Fast Video Generation with Magnitude-Aware Cache",
arXiv 2506.09045; the official integrations' forward loops).

The magnitude ratio of the network's residual (final hidden state - embedded input) between
consecutive sampling steps, ``gamma_k = mean_tokens ||r_k|| / ||r_{k-1}||``, is nearly the same
for every sample of a model and sampler, so it is measured once on full runs (:func:`fit_ratios`,
the pipeline caches it). At call k a skipped run multiplies the ratios since its last computed
call into ``R`` and adds ``|1 - R|`` to an error sum; while the sum stays within the threshold
and at most ``max_skips`` calls in a row are skipped, the call reuses the cached residual (only
embedding and readout run); otherwise it computes and the sums reset. The first ``retention``
fraction of the calls always computes (the last is not forced, as upstream). One decision per
call (per guidance branch with ``branches=2``: upstream keeps two accumulators, one per branch),
like :class:`caching.teacache.TeaCacheBatch`. Departures: the ratios are the mean over 64
calibration samples (upstream: one), and under guidance one ratio per step serves both
branches (the suite runs them as one batch; upstream interleaves two lists).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from blockloop.model import BlockState, LayerwiseModel
from caching.policies import ResidualCache
from caching.teacache import recorded_runs

__all__ = ["MagCache", "fit_ratios"]


def residual_norm(h: Tensor, h0: Tensor) -> Tensor:
    """Per-token L2 norm of the residual ``h - h0`` (B, N)."""
    return (h - h0).float().norm(dim=-1)


class MagCache(ResidualCache):
    """MagCache's rule (module docstring). Knob: the threshold on the accumulated magnitude
    error (upstream: 0.02-0.24). ``ratios``: gamma per call of a run (the pipeline fits them
    when unset); ``calls``: calls per run (the ``retention`` fraction of them is computed);
    ``max_skips``: upstream's K."""

    name = "magcache"
    knob_name = "threshold"
    knob_range = (0.0, 10.0)
    knob_default = 0.12
    needs_fit = True
    fitted = ("ratios",)
    fit_kind = "magcache-fit"

    def __init__(
        self,
        knob: float | None = None,
        ratios: tuple[float, ...] | list[float] = (),
        calls: int | None = None,
        max_skips: int = 2,
        retention: float = 0.2,
        branches: int = 1,
    ) -> None:
        ratios = tuple(float(r) for r in ratios)
        if not all(math.isfinite(r) and r > 0 for r in ratios):
            raise ValueError(f"magcache: ratios must be finite numbers > 0, got {ratios}")
        if calls is not None and (
            isinstance(calls, bool) or not isinstance(calls, int) or calls < 1
        ):
            raise ValueError(f"magcache: calls must be an integer >= 1, got {calls!r}")
        if isinstance(max_skips, bool) or not isinstance(max_skips, int) or max_skips < 1:
            raise ValueError(f"magcache: max_skips must be an integer >= 1, got {max_skips!r}")
        if not (isinstance(retention, (int, float)) and 0 <= retention < 1):
            raise ValueError(f"magcache: retention must be in [0, 1), got {retention!r}")
        if branches not in (1, 2):
            raise ValueError(f"magcache: branches must be 1 or 2, got {branches!r}")
        self.ratios, self.calls, self.max_skips = ratios, calls, max_skips
        self.retention, self.branches = float(retention), branches
        super().__init__(knob)

    def __repr__(self) -> str:
        return f"MagCache(threshold={self.knob:g}, max_skips={self.max_skips})"

    @staticmethod
    def fit(model, schedule, sampler: str, steps: int, **run: Any) -> tuple[dict, dict]:
        """The magnitude ratios (:func:`fit_ratios`) as the ``ratios`` option."""
        return fit_ratios(model, schedule, sampler, steps, **run)

    def _forced(self) -> bool:
        k, calls = self.call, self.calls
        if k == 0 or "residual" not in self.store:
            return True
        return calls is not None and k < int(calls * self.retention)

    def plan(self, state: BlockState) -> Tensor | None:
        """Accumulate the magnitude error of skipping this call per guidance branch; a branch
        within ``threshold`` (and ``max_skips``) is served wholly from the cache."""
        h0 = state.h
        self.store["prev"] = h0
        n = len(h0.chunk(self.branches)) if h0.shape[0] % self.branches == 0 else 1
        acc = self.store.setdefault("acc", [[1.0, 0.0, 0] for _ in range(n)])  # R, err, skips
        gamma = self.ratios[min(self.call, len(self.ratios) - 1)] if self.ratios else 1.0
        forced, serve = self._forced(), []
        for b in range(n):
            reuse = False
            if not forced:
                acc[b][0] *= gamma
                acc[b][1] += abs(1.0 - acc[b][0])
                acc[b][2] += 1
                reuse = acc[b][1] <= self.knob and acc[b][2] <= self.max_skips
            if not reuse:
                acc[b] = [1.0, 0.0, 0]
            serve.append(torch.full((h0.shape[0] // n,), reuse, device=h0.device))
        mask = torch.cat(serve)
        return mask if bool(mask.any()) else None


class _Residuals:
    """A denoiser that runs ``model`` whole and records each call's residual norms (B, N)."""

    def __init__(self, model: LayerwiseModel) -> None:
        self.model, self.norms = model, []

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        state = self.model.embed(x, t, cond)
        h0 = state.h
        for i in range(self.model.depth):
            self.model.run_block(i, state)
        self.norms.append(residual_norm(state.h, h0).cpu())
        return self.model.readout(state)


@torch.inference_mode()
def fit_ratios(
    model: LayerwiseModel, schedule, sampler: str, steps: int, **run: Any
) -> tuple[dict, dict]:
    """MagCache's calibration: gamma_k = mean over rows and tokens of ``||r_k|| / ||r_{k-1}||``
    on full runs (:func:`caching.teacache.recorded_runs`), averaged over the
    runs; gamma_0 = 1. Returns ({"ratios": (gamma_0, ...)}, info with ``calls``)."""
    per_run = []
    for rec in recorded_runs(model, schedule, sampler, steps, _Residuals, **run):
        norms = rec.norms
        gammas = [1.0] + [
            float((norms[k] / norms[k - 1].clamp_min(1e-12)).mean()) for k in range(1, len(norms))
        ]
        per_run.append(gammas)
    ratios = tuple(float(g) for g in np.mean(per_run, axis=0))
    return {"ratios": ratios}, {"calls": len(ratios), "runs": len(per_run)}
