"""The early-exit executor: a denoiser ``(x, t, cond) -> eps`` that runs a layer-wise backbone
block by block, exits samples as the policy decides, and compacts the still-running rows.

After every block (but the last) the policy returns a mask of exiting rows; their eps is read
out and written into the output, and the hidden state, skip stack, timesteps, conditioning and
the policy's per-row memory are index-selected down to the rows still running, so the next
block's cost falls with the exit rate (docs/design.md: the official AdaDiff code exits on a batch
mean and so never turns saved FLOPs into batched wall-clock).

Accounting: the FLOPs of each component (embedding, block i, readout, UEM i, LTE) are measured
once per row with :func:`blockloop.flops.flop_counter` (all are linear in the row count), and the
executor adds ``cost x rows`` for what it actually ran, exit-head overhead included. A test
cross-checks the sum against a FlopCounterMode run of the whole executor. The trace records, for
every sample and call, the exit block, the timestep and the policy's score.

A step-level cache (:mod:`caching`, ``cache=``) plugs into the same block loop: it may serve
whole rows from its cache (exit block -1 in the trace), and runs, reuses or skips each block of
the others, reporting the FLOPs it executed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from blockloop.contracts import CachePolicy, ExitContext, ExitPolicy, check_composition
from blockloop.cost import CostModel, FlopMeter
from blockloop.model import BlockState, LayerwiseModel
from models.heads import exit_heads_of

__all__ = ["EarlyExitDenoiser", "ExitTrace"]


@dataclass
class ExitTrace:
    """Per call: timesteps, exit blocks (0-based) and scores of every sample, and FLOPs."""

    t: list[Tensor] = field(default_factory=list)
    exit_block: list[Tensor] = field(default_factory=list)
    score: list[Tensor] = field(default_factory=list)
    flops: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.t)

    def arrays(self) -> dict[str, np.ndarray]:
        """Flat arrays over all (call, sample) pairs: call, t, exit_block, score."""
        if not self.t:
            return {k: np.zeros(0) for k in ("call", "t", "exit_block", "score")}
        calls = [torch.full_like(b, i) for i, b in enumerate(self.exit_block)]
        return {
            "call": torch.cat(calls).numpy(),
            "t": torch.cat(self.t).numpy(),
            "exit_block": torch.cat(self.exit_block).numpy(),
            "score": torch.cat(self.score).numpy(),
        }


@dataclass
class _Run:
    """One denoiser call in progress: its outputs, FLOP meter and the rows still running
    (their state, timesteps, embedded inputs and the policy's per-row memory)."""

    out: Tensor
    exit_block: Tensor
    score: Tensor
    meter: FlopMeter
    state: BlockState
    rows: Tensor  # indices into the call's batch
    t_run: Tensor
    h0: Tensor  # the running rows' embedded input (a cache's finish needs it)
    cached: bool
    memory: dict[str, Tensor] = field(default_factory=dict)

    def context(self, ex: EarlyExitDenoiser, layer: int) -> ExitContext:
        return ExitContext(
            ex.model, layer, self.state, self.t_run, ex.T, self.memory, ex.costs, self.meter
        )

    def keep(self, keep: Tensor) -> None:
        """Compact every per-row tensor down to the rows ``keep``."""
        self.state = self.state.select(keep)
        self.rows, self.t_run = self.rows[keep], self.t_run[keep]
        if self.cached:
            self.h0 = self.h0[keep]
        self.memory = {k: v[keep] for k, v in self.memory.items()}


class EarlyExitDenoiser:
    """Wraps a layer-wise model and an :class:`ExitPolicy` into a denoiser with exits.

    ``T`` is the schedule's number of training steps (time-dependent policies use it).
    ``paired=True`` is for classifier-free guidance batches (conditional half, then the
    unconditional half of the same samples): a sample's two rows then exit together, at the
    first block where the policy lets *both* exit. By default every row decides alone.
    """

    def __init__(
        self,
        model: LayerwiseModel,
        policy: ExitPolicy,
        T: int,
        paired: bool = False,
        costs: CostModel | None = None,
        cache: CachePolicy | None = None,
    ) -> None:
        policy.check_model(exit_heads_of(model), model.depth)
        if paired and policy.batch_mean:
            raise ValueError(
                f"policy {policy.name!r} decides once for the whole batch; paired (CFG) exits "
                "have no meaning with it"
            )
        if cache is not None:
            if policy.runs_blocks:
                raise ValueError(
                    f"policy {policy.name!r} runs every block itself; it does not compose with "
                    f"a step-level cache (got {cache.name!r})"
                )
            check_composition(type(cache), policy.name, policy.knob_name is not None, paired)
        self.model = model
        self.policy = policy
        self.T = T
        self.paired = paired
        self.costs = CostModel(model, T) if costs is None else costs
        self.cache = cache
        if cache is not None:
            cache.bind(model, self.costs)
        self.reset()

    def reset(self) -> None:
        """Clear the trace and counters (and the cache's state: a new sampling run)."""
        self.trace = ExitTrace()
        self.executed_flops = 0.0
        self.rows = 0  # (sample, call) pairs processed
        if self.cache is not None:
            self.cache.reset()

    # ----- results -----
    @property
    def flop_ratio(self) -> float:
        """Executed FLOPs / FLOPs of this never-exiting model over the same calls."""
        return self.executed_flops / max(1, self.rows * self.costs.full)

    def flop_ratio_vs(self, reference_flops_per_row: float) -> float:
        """Executed FLOPs relative to another model's full forward (e.g. the unpruned one)."""
        return self.executed_flops / max(1.0, self.rows * reference_flops_per_row)

    @property
    def layer_ratio(self) -> float:
        """Mean executed blocks / total blocks over every (sample, call)."""
        if not self.trace.exit_block:
            return float("nan")
        blocks = torch.cat(self.trace.exit_block).double() + 1
        return float(blocks.mean() / self.model.depth)

    # ----- the denoiser -----
    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """The denoiser: eps (B, C, H, W) of ``x`` (B, C, H, W) at model timesteps ``t`` (B,)
        with ``cond``, each row leaving at the block the policy (or the cache) decides. Appends the
        call to the trace and its executed FLOPs to the counters."""
        B, depth = x.shape[0], self.model.depth
        if self.paired and B % 2:
            raise ValueError(f"paired exits need an even batch (cond + uncond halves), got {B}")
        run = self._start(x, t, cond)
        if run.rows.shape[0]:
            self.policy.begin(run.context(self, -1))
        for i in range(depth if run.rows.shape[0] else 0):
            if self.cache is not None:
                run.meter.add(self.cache.run_block(i, run.state))
            elif self.policy.runs_blocks:
                run.meter.add(self.policy.run_block(self.model, i, run.state))
            else:
                self.model.run_block(i, run.state)
                run.meter.add(self.costs.blocks[i] * run.rows.shape[0])
            if i == depth - 1:
                self._leave(run, run.rows, run.state.h, self._readout(run, run.state), run.h0)
                break
            if not self.policy.exits:
                continue
            ctx = run.context(self, i)
            mask, s = self.policy.decide(ctx)
            if self.paired:  # compaction keeps row order, so the halves stay aligned
                both = mask.view(2, -1).all(0)
                mask = torch.cat([both, both])
            # The one host sync per block, which compaction needs: how many rows exit.
            n_exit = int(mask.sum())
            if n_exit and not self._exit(run, ctx, mask, s, n_exit):
                break
        self.executed_flops += run.meter.total
        self.rows += B
        self.trace.t.append(t.detach().float().cpu())
        self.trace.exit_block.append(run.exit_block.cpu())
        self.trace.score.append(run.score.cpu())
        self.trace.flops.append(run.meter.total)
        return run.out

    def _start(self, x: Tensor, t: Tensor, cond: Tensor | None) -> _Run:
        """Embed the batch; rows the cache serves wholly leave now (exit block -1)."""
        B = x.shape[0]
        state = self.model.embed(x, t, cond)
        run = _Run(
            out=torch.empty_like(x),  # eps in the input's dtype: autocast readouts are bf16
            exit_block=torch.full((B,), self.model.depth - 1, dtype=torch.long, device=x.device),
            score=torch.full((B,), float("nan"), device=x.device),
            meter=FlopMeter(self.costs.embed * B),
            state=state,
            rows=torch.arange(B, device=x.device),
            t_run=t,
            h0=state.h,
            cached=self.cache is not None,
        )
        served = None if self.cache is None else self.cache.begin(t, state)
        if self.cache is not None:
            run.meter.add(self.cache.plan_flops)
        if served is not None and bool(served.any()):
            idx = served.nonzero().squeeze(1)
            served_state = state.select(idx)
            served_state.h = self.cache.reused_hidden(idx, state)
            eps = self._readout(run, served_state)
            run.out[idx] = eps.to(run.out.dtype)
            run.exit_block[idx] = -1  # no block ran
            run.keep((~served).nonzero().squeeze(1))
        return run

    def _readout(self, run: _Run, state: BlockState) -> Tensor:
        """eps of ``state`` (the model's readout), its FLOPs counted."""
        eps = self.model.readout(state)
        run.meter.add(self.costs.readout * state.h.shape[0])
        return eps

    def _exit(self, run: _Run, ctx: ExitContext, mask: Tensor, s: Tensor, n_exit: int) -> bool:
        """Write out the ``n_exit`` rows ``mask`` lets exit after block ``ctx.layer`` (reusing
        the readout a policy already asked for) and compact the rest; False when none is left."""
        # Running rows first (in order, so CFG halves stay aligned), exiting rows last.
        order = torch.argsort(mask.to(torch.int8), stable=True)
        n_keep = order.shape[0] - n_exit
        keep, leaving = order[:n_keep], order[n_keep:]
        done = run.rows[leaving]
        # (the leaving rows' hidden state is indexed only where something reads it)
        if ctx.computed_readout is not None:
            eps = ctx.computed_readout[leaving]
            h = run.state.h[leaving] if run.cached else None
        else:
            left = run.state.select(leaving)
            eps, h = self._readout(run, left), left.h
        self._leave(run, done, h, eps, run.h0[leaving] if run.cached else None)
        run.exit_block[done] = ctx.layer
        run.score[done] = s[leaving].float()
        if n_keep == 0:
            return False
        run.keep(keep)
        return True

    def _leave(
        self, run: _Run, done: Tensor, h: Tensor | None, eps: Tensor, h0: Tensor | None
    ) -> None:
        """Rows ``done`` (indices into the call's batch) leave with hidden state ``h``, embedded
        input ``h0`` and output ``eps``; the cache is told."""
        run.out[done] = eps.to(run.out.dtype)
        if self.cache is not None:
            self.cache.finish(done, h, h0)

    def with_policy(
        self, policy: ExitPolicy, cache: CachePolicy | None = None
    ) -> EarlyExitDenoiser:
        """A fresh executor for the same model and cost model (no re-measurement)."""
        return EarlyExitDenoiser(
            self.model, policy, self.T, self.paired, costs=self.costs, cache=cache
        )
