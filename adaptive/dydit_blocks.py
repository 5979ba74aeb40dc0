"""How DyDiT reaches into one architecture's transformer blocks: a view per architecture, so the
routers, the masked training forward (:mod:`adaptive.dydit`) and the sliced inference
(:mod:`adaptive.dydit_policy`) are written once for every model they support.

A block, as DyDiT sees it (Zhao et al. 2025, Sec. 3.2-3.3): ``enter`` (the residual stream the
block starts from, and what modulates it), the attention branch (input, the fused
``[q; k; v]`` weight in head-major rows, the output projection, the residual add), the MLP
branch (input, the two linears and the activation, the residual add) and ``leave``. Width
masks switch heads (rows of ``[q; k; v]``, columns of the projection) and MLP channel groups
(rows of the first linear, columns of the second); token masks skip the MLP for some tokens.

- :class:`UViTView`: the suite's U-ViT (long-skip fusion on entry, plain pre-norm branches).
- :class:`DiTView`: a diffusers DiT (:class:`models.dit.DiTAdapter`): adaLN-Zero modulation
  of both branches' inputs and gates on their outputs, recomputed by each block from the time
  and class embedding (counted as the block's fixed cost).

The routers read the timestep's own embedding (``model.exit_inputs(state)[1]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BlockCost", "BlockView", "DiTView", "UViTView", "view_of"]


@dataclass(frozen=True)
class BlockCost:
    """Per-row FLOPs of one block's parts (2 x multiply-adds, as :mod:`blockloop.flops`), for
    ``tokens`` tokens of width ``dim``, ``heads`` heads and an MLP of ``hidden`` channels.
    ``skip``: a U-ViT long-skip fusion runs first; ``extra``: any other FLOPs the block runs
    whatever the masks (a DiT block's adaLN modulation)."""

    tokens: int
    dim: int
    heads: int
    hidden: int
    skip: bool
    extra: float = 0.0

    def fixed(self, width: bool, token: bool) -> float:
        """What runs whatever the masks: long-skip fusion, ``extra`` and the routers."""
        n, d = self.tokens, self.dim
        f = 2 * n * 2 * d * d if self.skip else 0
        f += self.extra
        f += 2 * 2 * d * (self.heads - 1) if width else 0
        f += 2 * n * d * max(1, d // 16) + 2 * n * max(1, d // 16) if token else 0
        return f

    def attn(self, heads_on: Tensor | float) -> Tensor | float:
        """Attention with ``heads_on`` heads: qkv and proj slices, QK^T and AV."""
        n, d, hd = self.tokens, self.dim, self.dim // self.heads
        return heads_on * (2 * n * d * 3 * hd + 4 * n * n * hd + 2 * n * hd * d)

    def mlp(self, groups_on: Tensor | float, tokens_on: Tensor | float) -> Tensor | float:
        """The MLP on ``tokens_on`` tokens with ``groups_on`` channel groups."""
        return tokens_on * groups_on * 4 * self.dim * (self.hidden // self.heads)


class BlockView:
    """The architecture-specific parts of a block (module docstring); ``mod`` is whatever
    ``enter`` returns for the branches to read (None when nothing modulates them)."""

    dim: int
    heads: int
    depth: int

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def router_input(self, state: Any) -> Tensor:
        """(B, D) the routers read: the timestep's embedding."""
        return self.model.exit_inputs(state)[1]

    def costs(self) -> list[BlockCost]:
        """Each block's :class:`BlockCost`."""
        raise NotImplementedError

    def enter(self, i: int, state: Any) -> tuple[nn.Module, Tensor, Any]:
        """(block ``i``, the residual stream it starts from, its modulation)."""
        raise NotImplementedError

    def attn_input(self, block: nn.Module, x: Tensor, mod: Any) -> Tensor:
        """The attention branch's (normalised, modulated) input."""
        raise NotImplementedError

    def attn_weights(self, block: nn.Module) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
        """(``[q; k; v]`` weight (3D, D), its bias or None, projection weight, its bias)."""
        raise NotImplementedError

    def mlp_input(self, block: nn.Module, x: Tensor, mod: Any) -> Tensor:
        """The MLP branch's (normalised, modulated) input."""
        raise NotImplementedError

    def mlp_weights(self, block: nn.Module) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(first linear's weight (hidden, D) and bias, second's weight (D, hidden) and bias)."""
        raise NotImplementedError

    def act(self, block: nn.Module, h: Tensor) -> Tensor:
        """The MLP's activation."""
        raise NotImplementedError

    def add(self, x: Tensor, branch: Tensor, mod: Any, which: int) -> Tensor:
        """``x`` plus branch ``which`` (0: attention, 1: MLP), gated where the block gates."""
        return x + branch

    def leave(self, i: int, state: Any, x: Tensor) -> None:
        """Block ``i``'s output ``x`` into ``state``."""
        state.h = x


class UViTView(BlockView):
    """The suite's U-ViT (:class:`models.UViT`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        cfg = model.cfg
        self.dim, self.heads, self.depth = cfg.embed_dim, cfg.num_heads, cfg.depth

    def costs(self) -> list[BlockCost]:
        """Tokens include the time / class / text tokens; out-blocks fuse a long skip."""
        cfg = self.model.cfg
        n, hidden, half = (
            cfg.extras + cfg.num_patches,
            int(cfg.embed_dim * cfg.mlp_ratio),
            cfg.depth // 2,
        )
        return [
            BlockCost(n, self.dim, self.heads, hidden, skip=i > half) for i in range(self.depth)
        ]

    def enter(self, i, state):
        """The block and its input: the long skip fused first for out-blocks."""
        block, skip = self.model.block_at(i, state)
        x = state.h if skip is None else block.skip_linear(torch.cat([state.h, skip], dim=-1))
        return block, x, None

    def attn_input(self, block, x, mod):
        """``norm1(x)``."""
        return block.norm1(x)

    def attn_weights(self, block):
        """The fused ``qkv`` linear and the projection."""
        att = block.attn
        return att.qkv.weight, att.qkv.bias, att.proj.weight, att.proj.bias

    def mlp_input(self, block, x, mod):
        """``norm2(x)``."""
        return block.norm2(x)

    def mlp_weights(self, block):
        """``fc1`` and ``fc2``."""
        fc1, _, fc2 = block.mlp
        return fc1.weight, fc1.bias, fc2.weight, fc2.bias

    def act(self, block, h):
        """The MLP's GELU."""
        return block.mlp[1](h)

    def leave(self, i, state, x):
        """The output into ``state``, pushed on the skip stack by in-blocks."""
        state.h = x
        if i < self.depth // 2:
            state.skips.append(x)


class DiTView(BlockView):
    """A diffusers DiT behind :class:`models.dit.DiTAdapter` (adaLN-Zero, Peebles & Xie 2023)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        cfg = model.dit.config
        self.dim = cfg.num_attention_heads * cfg.attention_head_dim
        self.heads, self.depth = cfg.num_attention_heads, model.depth

    def costs(self) -> list[BlockCost]:
        """Patch tokens only; each block's adaLN modulation (its time / label embedding and the
        6D projection: every linear in ``norm1``) counted from the module shapes, so no run is
        needed (a run here would land inside the caller's FLOP count)."""
        cfg = self.model.dit.config
        tokens = (cfg.sample_size // cfg.patch_size) ** 2
        out = []
        for block in self.model.dit.transformer_blocks:
            lins = [m for m in block.norm1.modules() if isinstance(m, nn.Linear)]
            extra = float(sum(2 * m.in_features * m.out_features for m in lins))
            hidden = block.ff.net[0].proj.out_features
            out.append(BlockCost(tokens, self.dim, self.heads, hidden, False, extra))
        return out

    def enter(self, i, state):
        """The block, the hidden tokens and ``norm1``'s (input, gates, MLP shift / scale)."""
        block = self.model.dit.transformer_blocks[i]
        x = state.h
        return block, x, block.norm1(x, state.t, state.y, hidden_dtype=x.dtype)

    def attn_input(self, block, x, mod):
        """The adaLN-modulated input ``norm1`` returned."""
        return mod[0]

    def attn_weights(self, block):
        """``to_q``, ``to_k``, ``to_v`` stacked (head-major rows) and ``to_out[0]``."""
        a = block.attn1
        w = torch.cat([a.to_q.weight, a.to_k.weight, a.to_v.weight])
        b = None if a.to_q.bias is None else torch.cat([a.to_q.bias, a.to_k.bias, a.to_v.bias])
        return w, b, a.to_out[0].weight, a.to_out[0].bias

    def mlp_input(self, block, x, mod):
        """``norm3(x) * (1 + scale) + shift`` (adaLN-Zero's MLP input)."""
        _, _, shift, scale, _ = mod
        return block.norm3(x) * (1 + scale[:, None]) + shift[:, None]

    def mlp_weights(self, block):
        """The feed-forward's ``proj`` and output linear."""
        first, second = block.ff.net[0].proj, block.ff.net[2]
        return first.weight, first.bias, second.weight, second.bias

    def act(self, block, h):
        """The feed-forward's GELU (tanh approximation in DiT)."""
        return F.gelu(h, approximate=block.ff.net[0].approximate)

    def add(self, x, branch, mod, which):
        """``x + gate * branch`` (adaLN-Zero's gates)."""
        gate = mod[1] if which == 0 else mod[4]
        return x + gate[:, None] * branch


def view_of(model: nn.Module) -> BlockView:
    """The :class:`BlockView` of ``model``; a ValueError names the architectures DyDiT supports."""
    from models.dit import DiTAdapter
    from models.uvit import UViT

    if isinstance(model, UViT):
        return UViTView(model)
    if isinstance(model, DiTAdapter):
        return DiTView(model)
    raise ValueError(
        f"DyDiT's routers attach to the U-ViT's and the DiT adapter's blocks, not to a "
        f"{type(model).__name__}"
    )
