"""Step-level feature caches: reuse block outputs of the previous denoiser call instead of
recomputing them.

A cache policy plugs into the layer-wise executor (:class:`blockloop.executor.EarlyExitDenoiser`,
``cache=``), which stays the one block loop of the suite: per denoiser call the executor calls

- :meth:`CachePolicy.begin` after embedding: it starts a new sampling run when the time did not
  decrease or the batch changed (the state resets between runs), plans the call, and may return
  a mask of rows served entirely from the cache (their final hidden state is
  :meth:`CachePolicy.reused_hidden`, read out by the executor);
- :meth:`CachePolicy.run_block` for block ``i`` of the running rows: run it, reuse parts of it,
  or skip it; returns the FLOPs it executed (reused parts cost zero, the cache's own matmuls
  count; its element-wise work counts zero, as everywhere in the suite);
- :meth:`CachePolicy.finish` when rows leave (an exit or the last block).

"Step" means denoiser call: a singlestep solver's intermediate evaluations are calls too, so an
interval counts calls (NFE), not solver steps. Under classifier-free guidance the conditional and
unconditional rows are cached separately (they are different rows).

Every policy has one knob the calibrator bisects (``knob_name``, ``knob_range``,
``knob_direction = -1``: a larger knob reuses more). Composition: with every sampler, with
pruning (the cache wraps whatever model runs), and with exits only where ``per_row`` (a row's
cached state is its own; :class:`TeaCache`): the static policies need every block computed on
their full calls, which an exit removes, so the executor refuses them with an exit policy.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from blockloop.contracts import CachePolicy

if TYPE_CHECKING:
    from blockloop.model import BlockState

__all__ = ["DeepCache", "Fora", "LearningToCache", "ResidualCache", "TeaCache"]


def _is_full_call(call: int, interval: float) -> bool:
    """Full calls of a (possibly fractional) interval N: call 0, then wherever floor(call / N)
    steps up. Integer N is the papers' "every N-th step"; a fractional N spreads
    ceil(calls / N) full calls evenly, so the calibrator can bisect it."""
    return call == 0 or math.floor(call / interval) > math.floor((call - 1) / interval)


class _BranchCache(CachePolicy):
    """Reuses blocks' attention and MLP branches (B, N, D) from the last call that computed
    them; the long-skip fusion of out-blocks is always recomputed (it mixes the fresh skip)."""

    requires = ("block_parts",)

    def reuse(self, i: int) -> tuple[bool, bool]:
        """(reuse attention, reuse MLP) of block ``i`` on this call."""
        raise NotImplementedError

    def run_block(self, i: int, state: BlockState) -> float:
        attn, mlp = self.store.setdefault("attn", {}), self.store.setdefault("mlp", {})
        ra, rm = self.reuse(i) if self.call > 0 else (False, False)
        a, m = self.model.block_parts(
            i, state, attn.get(i) if ra else None, mlp.get(i) if rm else None
        )
        attn[i], mlp[i] = a, m
        c = self.costs
        executed = c.fuse[i] + (0 if ra else c.attn[i]) + (0 if rm else c.mlp[i])
        if i == self.model.depth - 1:
            self._held()
        return self._account(i, state.h.shape[0], executed * state.h.shape[0])


class Fora(_BranchCache):
    """FORA (Selvaraju et al. 2024, "Fast-Forward Caching in Diffusion Transformer
    Acceleration", Sec. 3): every block's attention and MLP outputs are computed and cached on
    full calls (call 0, then every ``interval``-th) and reused on the calls between. A
    fractional interval spreads ceil(calls / N) full calls evenly (integer N is the paper's)."""

    name = "fora"
    knob_name = "interval"
    knob_range = (1.0, 100.0)
    knob_default = 2.0

    def plan(self, state: BlockState) -> None:
        """Decide whether this is a full call (call 0, then every ``interval``-th)."""
        self._full = _is_full_call(self.call, self.knob)

    def reuse(self, i: int) -> tuple[bool, bool]:
        """Every block reuses both branches, except on full calls."""
        return (not self._full, not self._full)


class LearningToCache(_BranchCache):
    """Learning-to-Cache (Ma et al., NeurIPS 2024, Sec. 3): a router ``beta[call, block, part]``
    in [0, 1], learned for one sampler and call count (:mod:`caching.l2c`), decides which
    attention (part 0) and MLP (part 1) branches are reused: part p of block i is reused on
    call c > 0 when ``beta < threshold``. Threshold 0 computes everything. A router learned as
    the authors run it holds 1 on even calls (full calls between the cache calls), so those are
    never reused from."""

    name = "l2c"
    knob_name = "threshold"
    knob_range = (0.0, 1.0)
    knob_default = 0.5
    needs_router = True

    def __init__(self, knob: float | None = None, router: Tensor | None = None) -> None:
        if router is None:
            raise ValueError("l2c needs a learned router (caching.l2c.train_router)")
        if router.ndim != 3 or router.shape[2] != 2:
            raise ValueError(f"l2c router must be (calls, blocks, 2), got {tuple(router.shape)}")
        self.router = router.detach().float().cpu()
        super().__init__(knob)

    def check_model(self, depth: int) -> None:
        """A ``ValueError`` unless the router was learned for ``depth`` blocks."""
        if self.router.shape[1] != depth:
            raise ValueError(
                f"l2c router was learned for {self.router.shape[1]} blocks, model has {depth}"
            )

    def plan(self, state: BlockState) -> None:
        """Read this call's reuse decisions off the router (``beta < threshold``); a ``ValueError``
        if the run makes more calls than the router was learned for."""
        if self.call >= self.router.shape[0]:
            raise ValueError(
                f"l2c router was learned for {self.router.shape[0]} denoiser calls; this run "
                f"makes more (learn one for this sampler and step count)"
            )
        self._reuse = (self.router[self.call] < self.knob).tolist()

    def reuse(self, i: int) -> tuple[bool, bool]:
        """(reuse attention, reuse MLP) of block ``i``, as the router decided for this call."""
        return tuple(self._reuse[i])


class DeepCache(CachePolicy):
    """DeepCache (Ma et al., CVPR 2024, Sec. 3.2) on U-ViT's long skips: on full calls (call 0,
    then every ``interval``-th) the whole network runs and the hidden state entering out-block
    ``depth - branch`` (the deep path's output) is cached; on the calls between, only the first
    ``branch`` in-blocks and their ``branch`` matching out-blocks run, the deep path replaced by
    the cached state. ``branch = 0`` reuses the final hidden state (only embed and readout run);
    ``branch = depth // 2`` skips only the mid block."""

    name = "deepcache"
    requires = ("long_skips",)
    knob_name = "interval"
    knob_range = (1.0, 100.0)
    knob_default = 2.0

    def __init__(self, knob: float | None = None, branch: int = 1) -> None:
        if isinstance(branch, bool) or not isinstance(branch, int) or branch < 0:
            raise ValueError(f"deepcache: branch must be an integer >= 0, got {branch!r}")
        self.branch = branch
        super().__init__(knob)

    def __repr__(self) -> str:
        return f"DeepCache(interval={self.knob:g}, branch={self.branch})"

    def check_model(self, depth: int) -> None:
        """A ``ValueError`` unless ``branch`` is in [0, depth // 2] (one of the in-blocks)."""
        if self.branch > depth // 2:
            raise ValueError(
                f"deepcache: branch must be in [0, {depth // 2}] for a {depth}-block model "
                f"(its in-blocks), got {self.branch}"
            )

    def plan(self, state: BlockState) -> None:
        """Decide whether this is a full call (call 0, then every ``interval``-th)."""
        self._full = _is_full_call(self.call, self.knob)

    def run_block(self, i: int, state: BlockState) -> float:
        """Run block ``i``; on a cached call the deep path (blocks ``branch`` to
        ``depth - branch - 1``) is skipped and its output taken from the last full call. Returns the
        FLOPs executed."""
        depth, k, n = self.model.depth, self.branch, state.h.shape[0]
        enter = depth - k  # the out-block the deep path feeds
        if not self._full and k <= i < enter:  # the deep path: the cache stands in for it
            if i == enter - 1:
                state.h = self.store["h"]
            return self._account(i, n, 0.0)
        self.model.run_block(i, state)
        if self._full and i == enter - 1:
            self.store["h"] = state.h
            self._held()
        return self._account(i, n, self.costs.blocks[i] * n)


class ResidualCache(CachePolicy):
    """A cache that serves whole rows from the residual (final hidden state - embedded input)
    of their last computed call, so only embedding and readout run on them, and computes every
    block of the rows it does not serve. Its ``plan`` decides which rows; it must keep the
    call's embedded input in ``store["prev"]`` (the residual is allocated in its shape)."""

    def reused_hidden(self, idx: Tensor, state: BlockState) -> Tensor:
        """The rows ``idx`` served from the cache: their embedded input plus their cached residual
        (every block's FLOPs counted as reused)."""
        full = sum(self.costs.blocks) * idx.shape[0]  # served rows: every block's work reused
        self.total += full
        self.reused += full
        return state.h[idx] + self.store["residual"][idx]

    def run_block(self, i: int, state: BlockState) -> float:
        """Run block ``i`` on every running row; returns the FLOPs executed."""
        self.model.run_block(i, state)
        n = state.h.shape[0]
        return self._account(i, n, self.costs.blocks[i] * n)

    def finish(self, rows: Tensor, h: Tensor, h0: Tensor) -> None:
        """Store the residual ``h - h0`` of the rows ``rows`` (allocated in the shape of
        ``store["prev"]`` when missing)."""
        residual = self.store.get("residual")
        if residual is None or residual.shape[0] != self.store["prev"].shape[0]:
            residual = self.store["residual"] = torch.zeros_like(self.store["prev"])
        residual[rows] = (h - h0).to(residual.dtype)
        self._held()


class TeaCache(ResidualCache):
    """An adaptive per-row rule in the spirit of TeaCache (Liu et al. 2024, "Timestep Embedding
    Tells: It's Time to Cache for Video Diffusion Model", Sec. 3.3): each row accumulates the
    relative L1 change of its embedded input (patch tokens + U-ViT's time token: the
    timestep-modulated input) since its last computed call; while the sum stays below
    ``threshold`` the row reuses its cached residual (final hidden state - embedded input) and
    only embedding and readout run; otherwise it runs the network, refreshes the residual and
    resets its sum. Differences from TeaCache: no polynomial rescaling of the change (the
    paper fits one per model); U-ViT has no adaLN, so its embedded input stands for the
    modulated one. Decided per row, so it composes with exits (the residual of an exited row is
    taken at its exit block) and needs the executor's compaction to become wall-clock."""

    name = "teacache"
    knob_name = "threshold"
    knob_range = (0.0, 10.0)
    knob_default = 0.1
    per_row = True

    def plan(self, state: BlockState) -> Tensor | None:
        """Add each row's relative L1 change of the embedded input since the previous call to its
        sum; returns the mask of rows served from the cache (sum below ``threshold`` and a residual
        cached), or None on a run's first call."""
        h0 = state.h
        prev = self.store.get("prev")
        self.store["prev"] = h0
        if prev is None:
            b = h0.shape[0]
            self.store["acc"] = torch.zeros(b, device=h0.device)
            self.store["residual"] = torch.zeros_like(h0)
            self.store["valid"] = torch.zeros(b, dtype=torch.bool, device=h0.device)
            return None
        dims = tuple(range(1, h0.ndim))
        rel = (h0 - prev).abs().float().mean(dims) / prev.abs().float().mean(dims).clamp_min(1e-12)
        acc = self.store["acc"] + rel
        served = (acc < self.knob) & self.store["valid"]
        self.store["acc"] = torch.where(served, acc, torch.zeros_like(acc))
        return served

    def finish(self, rows: Tensor, h: Tensor, h0: Tensor) -> None:
        """Store the residuals (:meth:`ResidualCache.finish`) and mark those rows as having one."""
        super().finish(rows, h, h0)
        self.store["valid"][rows] = True
