"""DyDiT at inference: a policy that runs every block at the width and on the tokens its routers
choose, with the weights sliced, so the FLOPs it saves are not executed.

The routers (:mod:`adaptive.dydit`) are thresholded (``sigmoid(logit) > threshold``; DyDiT uses
0.5, the policy's default knob, which the calibrator may move to meet a cell's FLOP target
exactly). Heads and channel groups depend on t alone, so a sampling step's batch shares one
pattern; rows are grouped by pattern anyway (a batch of mixed timesteps is valid input). Tokens
a block's token router turns off are gathered out of its MLP and pass through unchanged. Sliced
weights are cached per (block, pattern). The FLOPs returned per block are the analytic count
:class:`adaptive.dydit_blocks.BlockCost` (a test checks it against FlopCounterMode on random
patterns). The block's architecture is reached through :mod:`adaptive.dydit_blocks` (the
U-ViT's and the DiT adapter's).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from adaptive.dydit import with_head0
from adaptive.dydit_blocks import BlockCost, BlockView, view_of
from blockloop.contracts import ExitContext, ExitPolicy

__all__ = ["DyDiT"]


def _groups(mask: Tensor) -> list[tuple[Tensor | None, Tensor]]:
    """[(rows or None for all, active indices)] per distinct row pattern of a (B, H) mask."""
    patterns, inverse = torch.unique(mask, dim=0, return_inverse=True)
    if patterns.shape[0] == 1:
        return [(None, patterns[0].nonzero().squeeze(1))]
    return [
        ((inverse == k).nonzero().squeeze(1), p.nonzero().squeeze(1))
        for k, p in enumerate(patterns)
    ]


class DyDiT(ExitPolicy):
    """Dynamic width and tokens (Zhao et al. 2025); never exits. Knob: the routers' threshold
    (a larger one switches more off: fewer FLOPs)."""

    name = "dydit"
    knob_name = "threshold"
    knob_range = (0.01, 0.99)
    knob_default = 0.5
    knob_direction = -1
    heads = "dydit"
    recipe = "dydit"
    exits: ClassVar[bool] = False
    runs_blocks: ClassVar[bool] = True

    def __init__(self, knob: float | None = None) -> None:
        super().__init__(knob)
        # sigmoid(l) > knob  <=>  l > logit(knob): the routers' logits are compared with this
        self._logit = math.log(self.knob / (1 - self.knob))
        self.widths: list[dict[str, object]] = []  # per call: t and active fractions per block
        self._weights: dict[tuple, tuple[Tensor, ...]] = {}
        self._costs: list[BlockCost] | None = None
        self._view: BlockView | None = None

    def begin(self, ctx: ExitContext) -> None:
        """Open this call's record in :attr:`widths` (its t; fractions filled per block)."""
        depth = ctx.model.depth
        self.widths.append(
            {
                "t": float(ctx.t.float().mean()),
                "heads": [math.nan] * depth,
                "groups": [math.nan] * depth,
                "tokens": [math.nan] * depth,
            }
        )

    def decide(self, ctx: ExitContext) -> tuple[Tensor, Tensor]:
        """Never exits (the executor does not call it: ``exits`` is False)."""
        b, dev = ctx.state.h.shape[0], ctx.state.h.device
        return torch.zeros(b, dtype=torch.bool, device=dev), torch.full((b,), math.nan, device=dev)

    def _masks(self, model, i: int, temb: Tensor, heads: int) -> tuple[Tensor, Tensor]:
        """(heads, groups) bool masks (B, H), head / group 0 always on."""
        r = model.routers
        if not r.width:
            on = torch.ones(temb.shape[0], heads, dtype=torch.bool, device=temb.device)
            return on, on
        hl, gl = r.width_logits(i, temb)
        return with_head0(hl > self._logit), with_head0(gl > self._logit)

    def _attn_weights(self, i: int, block, idx: Tensor) -> tuple[Tensor, ...]:
        key = (i, "attn", tuple(idx.tolist()))
        if key not in self._weights:
            w_qkv, b_qkv, w_proj, b_proj = self._view.attn_weights(block)
            D = w_proj.shape[0]
            d = D // self._view.heads
            part = torch.arange(3, device=idx.device)[:, None, None] * D
            cols = (part + idx[None, :, None] * d + torch.arange(d, device=idx.device)).reshape(-1)
            inner = (idx[:, None] * d + torch.arange(d, device=idx.device)).reshape(-1)
            b = None if b_qkv is None else b_qkv[cols]
            self._weights[key] = (w_qkv[cols], b, w_proj[:, inner], b_proj)
        return self._weights[key]

    def _attention(self, i: int, block, x: Tensor, heads: Tensor) -> Tensor:
        """The attention branch (B, N, D) of ``x`` (its input) with each row's active heads."""
        out = torch.empty_like(x)
        for rows, idx in _groups(heads):
            xs = x if rows is None else x[rows]
            w_qkv, b_qkv, w_proj, b_proj = self._attn_weights(i, block, idx)
            b, n, _ = xs.shape
            qkv = F.linear(xs, w_qkv, b_qkv).reshape(b, n, 3, idx.shape[0], -1)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1)
            y = F.linear(o, w_proj, b_proj)
            if rows is None:
                return y
            out[rows] = y
        return out

    def _mlp_weights(self, i: int, block, idx: Tensor, heads: int) -> tuple[Tensor, ...]:
        key = (i, "mlp", tuple(idx.tolist()))
        if key not in self._weights:
            w1, b1, w2, b2 = self._view.mlp_weights(block)
            c = w1.shape[0] // heads
            ch = (idx[:, None] * c + torch.arange(c, device=idx.device)).reshape(-1)
            self._weights[key] = (w1[ch], b1[ch], w2[:, ch], b2)
        return self._weights[key]

    def _mlp(self, i: int, block, xn: Tensor, groups: Tensor, tokens: Tensor | None) -> Tensor:
        """The MLP branch (B, N, D) of its input ``xn``, run on the tokens ``tokens`` (B, N)
        lets through (zero for the others; all if None) with each row's active channel
        groups."""
        if tokens is not None and bool(tokens.all()):
            tokens = None  # no gather / scatter when no token skips
        out = None
        for rows, idx in _groups(groups):
            w1, b1, w2, b2 = self._mlp_weights(i, block, idx, groups.shape[1])
            xr = xn if rows is None else xn[rows]
            flat = xr.reshape(-1, xr.shape[-1])
            sel = None if tokens is None else (tokens if rows is None else tokens[rows]).reshape(-1)
            hid = self._view.act(block, F.linear(flat if sel is None else flat[sel], w1, b1))
            y = F.linear(hid, w2) + b2
            if sel is not None:
                y = torch.zeros_like(flat).index_put_((sel,), y)
            if rows is None:
                return y.view_as(xn)
            out = torch.zeros_like(xn) if out is None else out
            out[rows] = y.view_as(xr)
        return out

    def run_block(self, model, i: int, state) -> float:
        """Run block ``i`` in place on ``state`` at the routed width; return its FLOPs."""
        if self._view is None or self._view.model is not model:
            self._view = view_of(model)
            self._costs = self._view.costs()
            self._weights.clear()  # slices of the previous model's weights
        view, r = self._view, model.routers
        c = self._costs[i]
        block, x, mod = view.enter(i, state)
        heads, groups = self._masks(model, i, view.router_input(state), view.heads)
        x = view.add(x, self._attention(i, block, view.attn_input(block, x, mod), heads), mod, 0)
        tokens = None
        if r.token:
            tokens = r.tokens[i](x) > self._logit  # (B, N)
        m = self._mlp(i, block, view.mlp_input(block, x, mod), groups, tokens)
        view.leave(i, state, view.add(x, m, mod, 1))
        n_tok = tokens.sum(1).float() if tokens is not None else float(c.tokens)
        h_on, g_on = heads.sum(1).float(), groups.sum(1).float()
        rec = self.widths[-1] if self.widths else None
        if rec is not None:
            rec["heads"][i] = float(h_on.mean()) / c.heads
            rec["groups"][i] = float(g_on.mean()) / c.heads
            rec["tokens"][i] = float(torch.as_tensor(n_tok).float().mean()) / c.tokens
        per_row = c.attn(h_on) + c.mlp(g_on, n_tok)  # (B,)
        return c.fixed(r.width, r.token) * x.shape[0] + float(per_row.sum())
