"""Caches that decide from the first block's residual, or forecast features between full calls.

- :class:`FirstBlockCache` (ParaAttention's First-Block Cache, as diffusers'
  ``FirstBlockCacheConfig`` runs it): block 0 always runs; when its residual changed little
  since the last fully computed call, the other blocks are skipped and their cached residual
  is added instead.
- :class:`TaylorSeer` (Liu et al., ICCV 2025, "From Reusing to Forecasting: Accelerating
  Diffusion Models with TaylorSeers", Sec. 3.2-3.3): every block's attention and MLP branches
  are computed on full calls and *forecast* on the calls between by a Taylor expansion whose
  derivatives are finite differences between consecutive full calls.

Both follow the contract of :class:`blockloop.contracts.CachePolicy`. "Step" is a denoiser call
(see :mod:`caching.policies`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from blockloop.contracts import CachePolicy
from caching.policies import _is_full_call

if TYPE_CHECKING:
    from blockloop.model import BlockState

__all__ = ["FirstBlockCache", "TaylorSeer"]


class FirstBlockCache(CachePolicy):
    """First-Block Cache. Per call, block 0 runs on every row and its residual ``r0`` (output
    minus input) is compared with ``r0`` of the last fully computed call:
    ``mean|r0 - r0_prev| / mean|r0_prev|`` (means over the whole batch, one decision per call,
    as upstream). At or below ``threshold`` the remaining blocks are skipped and the hidden
    state is block 0's output plus the cached tail residual (final hidden state minus block 0's
    output at the last computed call); above it every block runs and both residuals are
    refreshed. Upstream default: threshold 0.05 (diffusers). ``branches = 2`` (classifier-free
    guidance: conditional rows, then unconditional) decides and caches each half on its own,
    as diffusers' per-branch cache contexts do."""

    name = "fbcache"
    knob_name = "threshold"
    knob_range = (0.0, 10.0)
    knob_default = 0.05

    def __init__(self, knob: float | None = None, branches: int = 1) -> None:
        if branches not in (1, 2):
            raise ValueError(f"fbcache: branches must be 1 or 2 (guidance), got {branches!r}")
        self.branches = branches
        super().__init__(knob)

    def plan(self, state: BlockState) -> None:
        """Keep the call's embedded input (block 0's residual is taken against it); a
        ``ValueError`` if the batch does not split into ``branches``."""
        if state.h.shape[0] % self.branches:
            raise ValueError(f"fbcache: {self.branches} branches need an even batch")
        self._h0 = state.h

    def _decide(self, r0: Tensor) -> Tensor:
        """(B,) bool: the rows whose branch reuses the tail on this call."""
        prev = self.store.get("r0")
        reuse = torch.zeros(r0.shape[0], dtype=torch.bool, device=r0.device)
        if prev is None or self.call == 0:
            return reuse
        for rows in torch.arange(r0.shape[0], device=r0.device).chunk(self.branches):
            change = (r0[rows] - prev[rows]).abs().float().mean()
            scale = prev[rows].abs().float().mean().clamp_min(1e-12)
            reuse[rows] = bool(change / scale <= self.knob)
        return reuse

    def run_block(self, i: int, state: BlockState) -> float:
        """Block 0 runs on every row and decides (per call, or per guidance branch) whether the
        rest is reused from the tail residual; later blocks run only on the rows that compute, and
        the last assembles every row's hidden state. Returns the FLOPs executed."""
        n, depth = state.h.shape[0], self.model.depth
        if i == 0:
            self.model.run_block(0, state)
            self._reuse = self._decide(state.h - self._h0)
            self._h1, self._r0 = state.h, state.h - self._h0
            compute = (~self._reuse).nonzero().squeeze(1)
            self._compute = compute
            self._sub = state if compute.shape[0] == n else state.select(compute)
            if i == depth - 1:
                self._refresh(state.h)
            return self._account(0, n, self.costs.blocks[0] * n)
        m = self._compute.shape[0]
        if m:
            self.model.run_block(i, self._sub)
        if i == depth - 1:
            state.h = self._assemble(n)
        return self._account(i, n, self.costs.blocks[i] * m)

    def _assemble(self, n: int) -> Tensor:
        """The final hidden state: computed rows as run, reusing rows from the tail residual."""
        if self._compute.shape[0] == n:
            h = self._sub.h
        else:
            h = self._h1 + self.store["tail"].to(self._h1.dtype)
            h[self._compute] = self._sub.h
        self._refresh(h)
        return h

    def _refresh(self, h: Tensor) -> None:
        """Computed rows refresh the first-block and tail residuals (reusing rows keep theirs)."""
        rows = self._compute
        if "r0" not in self.store:
            self.store["r0"] = self._r0.clone()
            self.store["tail"] = (h - self._h1).clone()
        else:
            self.store["r0"][rows] = self._r0[rows].to(self.store["r0"].dtype)
            self.store["tail"][rows] = (h - self._h1)[rows].to(self.store["tail"].dtype)
        self._held()


class TaylorSeer(CachePolicy):
    """TaylorSeer. On full calls (call 0, then every ``interval``-th; a fractional interval
    spreads them evenly, as FORA's) every block's attention and MLP branches ``F`` are computed
    and their finite differences updated: ``D0 = F``, ``Dk = (D(k-1) - D(k-1)_prev) / d`` for
    ``k <= order`` (``d``: calls between the two full calls). On a call ``s`` calls after the
    last full one, each branch is forecast as ``sum_k Dk s^k / k!`` (Eq. 7-8 of the paper, in
    denoiser calls instead of timesteps) and the block runs only its long-skip fusion. Until
    ``k + 1`` full calls have been seen the expansion stops at the orders known (order 0 alone
    is FORA's reuse). Orders 1 and 2 (the paper's first- and second-order forecasts); default
    interval 4 (our choice for 10-20-step samplers; the paper sweeps it)."""

    name = "taylorseer"
    requires = ("block_parts",)
    knob_name = "interval"
    knob_range = (1.0, 100.0)
    knob_default = 4.0
    ORDERS = (1, 2)

    def __init__(self, knob: float | None = None, order: int = 1) -> None:
        if isinstance(order, bool) or order not in self.ORDERS:
            raise ValueError(
                f"taylorseer: no order {order!r}; valid choices: {', '.join(map(str, self.ORDERS))}"
            )
        self.order = order
        super().__init__(knob)

    def __repr__(self) -> str:
        return f"TaylorSeer(interval={self.knob:g}, order={self.order})"

    def plan(self, state: BlockState) -> None:
        """Decide whether this is a full call; on one, record the calls since the previous one."""
        self._full = _is_full_call(self.call, self.knob)
        if self._full:
            self._distance = self.call - self.store.get("last_full", self.call)
            self.store["last_full"] = self.call

    def run_block(self, i: int, state: BlockState) -> float:
        """On a full call run block ``i``'s branches and update their differences; otherwise
        forecast both branches and run only the long-skip fusion. Returns the FLOPs executed."""
        c, n = self.costs, state.h.shape[0]
        if self._full:
            a, m = self.model.block_parts(i, state)
            self._update(i, {"attn": a, "mlp": m})
            executed = c.fuse[i] + c.attn[i] + c.mlp[i]
        else:
            self.model.block_parts(i, state, self._forecast(i, "attn"), self._forecast(i, "mlp"))
            executed = c.fuse[i]
        if i == self.model.depth - 1:
            self._held()
        return self._account(i, n, executed * n)

    def _update(self, i: int, branches: dict[str, Tensor]) -> None:
        """New finite differences ``D0..D(order)`` of block ``i``'s branches (a full call)."""
        d = self._distance
        for part, f in branches.items():
            new = f
            for k in range(self.order + 1):
                table = self.store.setdefault(f"d{k}", {})
                old = table.get((i, part))
                table[(i, part)] = new
                if old is None or d == 0 or k == self.order:
                    # The higher orders are stale until this one has a previous value.
                    for j in range(k + 1, self.order + 1):
                        self.store.setdefault(f"d{j}", {}).pop((i, part), None)
                    break
                new = (new - old) / d

    def _forecast(self, i: int, part: str) -> Tensor:
        """``sum_k Dk s^k / k!`` for block ``i``'s ``part``, ``s`` calls after the last full."""
        s = self.call - self.store["last_full"]
        f = self.store["d0"][(i, part)]
        for k in range(1, self.order + 1):
            dk = self.store.get(f"d{k}", {}).get((i, part))
            if dk is None:
                break
            f = f + dk * (s**k / math.factorial(k))
        return f
