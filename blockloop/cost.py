"""What the block loop costs: FLOPs per row of each component of a layer-wise model, measured
once on one row, and the meter that sums what one denoiser call executed.

Every component (embedding, block i and its parts, readout, UEM i, LTE) is linear in the row
count, so ``cost x rows`` of what actually ran is the executed FLOPs of a call (exit and cache
overhead included); a test cross-checks the sum against a FlopCounterMode run of the whole
executor (``docs/design.md``, "Accounting").
"""

from __future__ import annotations

import torch

from blockloop.flops import count_flops
from blockloop.model import BlockState, LayerwiseModel, capabilities
from models.heads import lte_score, uncertainty

__all__ = ["CostModel", "FlopMeter"]


class CostModel:
    """FLOPs per row of each component of a layer-wise model, measured on one row. The
    parts of a block (``fuse``, ``attn``, ``mlp``) are measured only for a model with the
    ``block_parts`` capability (:mod:`blockloop.model`), empty otherwise."""

    def __init__(self, model: LayerwiseModel, T: int) -> None:
        dev = next(model.parameters()).device
        x = torch.zeros(1, *model.input_shape, device=dev)
        t = torch.full((1,), T / 2, device=dev)
        cond = model.example_cond(1)  # the null class or empty prompt: costs as any other
        with torch.inference_mode():
            self.embed, state = count_flops(model.embed, x, t, cond)
            heads = capabilities(model)
            # TeaCache's modulated signal, computed on top of the embedding when a cache reads it.
            self.signal = (
                count_flops(model.cache_signal, state)[0] if "cache_signal" in heads else 0
            )
            self.blocks = []
            # A block's parts, for step-level caches that reuse some of them: the long-skip
            # fusion (out-blocks), the attention branch and the MLP branch.
            self.fuse, self.attn, self.mlp = [], [], []
            for i in range(model.depth):
                if "block_parts" in heads:
                    self._parts(model, i, state)
                f, state = count_flops(model.run_block, i, state)
                self.blocks.append(f)
                if "block_parts" in heads:
                    self.mlp.append(f - self.fuse[-1] - self.attn[-1])
            self.readout, _ = count_flops(model.readout, state)
            self.uem = (
                [count_flops(uncertainty, model, i, state)[0] for i in range(model.depth)]
                if "uem" in heads
                else [0] * model.depth
            )
            self.lte = count_flops(lte_score, model, state)[0] if "lte" in heads else 0

    def _parts(self, model: LayerwiseModel, i: int, state: BlockState) -> None:
        """Measure block ``i``'s long-skip fusion and attention branch on copies of ``state``."""
        one = torch.arange(1, device=state.h.device)
        a, m = model.block_parts(i, state.select(one))
        fuse = count_flops(model.block_parts, i, state.select(one), a, m)[0]
        attn = count_flops(model.block_parts, i, state.select(one), None, m)[0] - fuse
        self.fuse.append(fuse)
        self.attn.append(attn)

    @property
    def full(self) -> int:
        """One row through the whole network, no exit heads."""
        return self.embed + sum(self.blocks) + self.readout


class FlopMeter:
    """The FLOPs executed in one denoiser call: the executor adds each block, and a policy's
    lazy reads (readout, UEM, LTE) add themselves through its :class:`ExitContext`."""

    def __init__(self, start: float = 0.0) -> None:
        self.total = float(start)

    def add(self, flops: float) -> None:
        """Add ``flops`` executed FLOPs to the call's total."""
        self.total += flops
