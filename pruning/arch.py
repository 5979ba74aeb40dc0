"""What pruning needs to know of each architecture it supports: which linears produce attention
heads and MLP hidden channels, which parameters torch-pruning must follow outside modules, where
the head counts are written back, and the example inputs it traces with.

- the suite's U-ViT (:class:`models.UViT`): a fused ``qkv`` linear, ``mlp[0]``, a learned
  position embedding;
- a diffusers DiT behind :class:`models.dit.DiTAdapter`: ``to_q`` / ``to_k`` / ``to_v`` pruned by
  the same whole heads, the feed-forward's first linear; diffusers' attention reads its head
  count from ``attn.heads``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models import UViT
from models.uvit import Attention

__all__ = [
    "arch",
    "attention_heads",
    "example_inputs",
    "mlp_inputs",
    "unwrapped",
    "write_back_heads",
]


def example_inputs(model: nn.Module) -> tuple[Tensor, Tensor, Tensor | None]:
    """Two rows (zeros, t = 10 and 500, the null condition) for torch-pruning to trace."""
    dev = next(model.parameters()).device
    x = torch.zeros(2, *model.input_shape, device=dev)
    t = torch.tensor([10.0, 500.0], device=dev)
    return x, t, model.example_cond(2)


def arch(model: nn.Module) -> str:
    """ "uvit" or "dit"; a ValueError names what pruning supports."""
    from models.dit import DiTAdapter

    if isinstance(model, UViT):
        return "uvit"
    if isinstance(model, DiTAdapter):
        return "dit"
    raise ValueError(
        f"pruning supports the U-ViT and the DiT adapter, not a {type(model).__name__}"
    )


def attention_heads(model: nn.Module) -> dict[nn.Module, int]:
    """The linears that produce each attention's heads -> its head count (torch-pruning's
    ``num_heads``): U-ViT's fused ``qkv``; a DiT's ``to_q``, ``to_k`` and ``to_v``."""
    if arch(model) == "uvit":
        return {m.qkv: m.num_heads for m in model.modules() if isinstance(m, Attention)}
    out = {}
    for block in model.dit.transformer_blocks:
        a = block.attn1
        out.update({lin: a.heads for lin in (a.to_q, a.to_k, a.to_v)})
    return out


def mlp_inputs(model: nn.Module) -> list[nn.Module]:
    """Each block's first MLP linear (its hidden channels are pruned)."""
    if arch(model) == "uvit":
        return [blk.mlp[0] for blk in model.blocks]
    return [block.ff.net[0].proj for block in model.dit.transformer_blocks]


def unwrapped(model: nn.Module) -> list[tuple[nn.Parameter, int]]:
    """Parameters torch-pruning must follow outside modules: U-ViT's learned position
    embedding (a DiT's is a fixed buffer)."""
    return [(model.pos_embed, 2)] if arch(model) == "uvit" else []


def write_back_heads(model: nn.Module) -> dict[str, int]:
    """Store each attention module's head count after its projections lost whole heads."""
    heads = {}
    if arch(model) == "dit":
        head_dim = model.dit.config.attention_head_dim
        for name, m in model.named_modules():
            if name.endswith(".attn1"):
                m.heads = m.to_q.out_features // head_dim  # diffusers' processors read it
                heads[name] = m.heads
        return heads
    for name, m in model.named_modules():
        if isinstance(m, Attention):
            m.num_heads = m.qkv.out_features // (3 * m.head_dim)
            heads[name] = m.num_heads
    return heads
