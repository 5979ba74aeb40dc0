"""An example plugin: one exit rule and one step-level cache, registered on import.

``python -m bench.grid --plugin diffcompress_example ...`` imports this module in the command
and in every worker; installed, the ``diffcompress.plugins`` entry point does the same.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bench.plugins import register
from blockloop.contracts import CachePolicy, ExitContext, ExitPolicy

__all__ = ["Settled", "Stride"]


class Settled(ExitPolicy):
    """Exit a row once the relative change of its readout between consecutive blocks has been
    below ``rel`` for ``blocks`` blocks in a row (a relative variant of PABEE's patience). A
    sweep sets the option with ``policy_args = {blocks = 3}``."""

    name = "settled"
    knob_name = "rel"
    knob_range = (0.0, 10.0)
    knob_default = 0.1
    knob_direction = -1  # a larger knob exits earlier
    recipe = "layerwise"

    def __init__(self, knob: float | None = None, blocks: int = 2) -> None:
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
            raise ValueError(f"settled: blocks must be an integer >= 1, got {blocks!r}")
        self.blocks = blocks
        super().__init__(knob)

    def __repr__(self) -> str:
        return f"Settled(rel={self.knob:g}, blocks={self.blocks})"

    def decide(self, ctx: ExitContext) -> tuple[Tensor, Tensor]:
        eps = ctx.readout().flatten(1)
        prev = ctx.memory.get("prev")
        ctx.memory["prev"] = eps
        if prev is None:
            change = torch.full((eps.shape[0],), float("inf"), device=eps.device)
        else:
            change = (eps - prev).norm(dim=1) / prev.norm(dim=1).clamp_min(1e-12)
        calm = ctx.memory.get("calm", torch.zeros_like(change)) * (change < self.knob) + (
            change < self.knob
        )
        ctx.memory["calm"] = calm
        return calm >= self.blocks, change


class Stride(CachePolicy):
    """Compute every ``interval``-th call of a sampling run (the first included) and serve the
    calls between wholly from the last computed residual (final hidden state - embedded
    input), so only embedding and readout run on them. Needs no model capability."""

    name = "stride"
    knob_name = "interval"
    knob_range = (1.0, 100.0)
    knob_default = 2.0
    integer_knob = True

    def plan(self, state) -> Tensor | None:
        rows = state.h.shape[0]
        if self.call % int(self.knob) == 0 or "residual" not in self.store:
            return None
        return torch.ones(rows, dtype=torch.bool, device=state.h.device)

    def reused_hidden(self, idx: Tensor, state) -> Tensor:
        full = sum(self.costs.blocks) * idx.shape[0]
        self.total += full
        self.reused += full
        return state.h[idx] + self.store["residual"][idx]

    def run_block(self, i: int, state) -> float:
        self.model.run_block(i, state)
        n = state.h.shape[0]
        return self._account(i, n, self.costs.blocks[i] * n)

    def finish(self, rows: Tensor, h: Tensor, h0: Tensor) -> None:
        residual = self.store.setdefault("residual", torch.zeros_like(h0))
        residual[rows] = (h - h0).to(residual.dtype)
        self._held()


register("policy", Settled)
register("cache", Stride)
