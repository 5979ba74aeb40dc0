"""U-ViT (Bao et al. 2023, "All are Worth Words: A ViT Backbone for Diffusion Models") with a
layer-wise interface for early exiting.

Tokens are ``[time, (class), patch_1 .. patch_L]``. ``depth`` counts every block: ``depth // 2``
in-blocks push their output on a skip stack, one mid block, and ``depth // 2`` out-blocks pop a
skip each and fuse it with ``Linear(concat(h, skip))`` (U-ViT's long skips). One shared output
head reads eps out of any block's hidden state: LayerNorm -> Linear -> unpatchify -> 3x3 conv.

The layer-wise interface is what the early-exit executor drives::

    state = model.embed(x, t, cond)          # tokens, empty skip stack, time embedding
    for i in range(model.depth):
        model.run_block(i, state)            # may stop after any block
    eps = model.readout(state)

``forward`` is exactly that loop. The interface is the layer-wise model contract
(:mod:`blockloop.model`), with every optional capability: block parts, long skips, and the
UEM / LTE exit heads when trained with them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.heads import LTEHead, UEMHeads, lte_score, uncertainty
from models.layout import unpatchify

__all__ = [
    "EXIT_HEADS",
    "UViT",
    "UViTConfig",
    "UViTState",
    "timestep_embedding",
    "unpatchify",
]


@dataclass(frozen=True)
class UViTConfig:
    """The U-ViT's architecture: image, patch and channel sizes, width, depth (odd), heads,
    conditioning (classes or text) and exit heads; validated on construction."""

    img_size: int = 8
    in_chans: int = 1
    patch_size: int = 1
    embed_dim: int = 96
    depth: int = 9
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 0  # > 0 adds a class token; label ``num_classes`` is the null class (CFG)
    qkv_bias: bool = False
    mlp_time_embed: bool = True
    conv_out: bool = True
    exit_heads: str = "none"  # learned exit parts: "uem" (one UEM per block) or "lte" (BERxiT)
    time_offset: float = 0.0  # added to t before embedding (official checkpoints: 1, see official)
    # Text conditioning (U-ViT's t2i model): context_len tokens of a frozen text encoder's
    # context_dim-wide states, projected to embed_dim, enter after the time token.
    context_dim: int = 0
    context_len: int = 0

    def __post_init__(self) -> None:
        if self.exit_heads not in EXIT_HEADS:
            raise ValueError(
                f"unknown exit_heads {self.exit_heads!r}; valid choices: {', '.join(EXIT_HEADS)}"
            )
        if self.depth < 1 or self.depth % 2 == 0:
            raise ValueError(
                f"depth counts in + mid + out blocks and must be odd, got {self.depth}"
            )
        if self.img_size % self.patch_size:
            raise ValueError(
                f"img_size {self.img_size} is not a multiple of patch {self.patch_size}"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim {self.embed_dim} is not divisible by {self.num_heads} heads"
            )
        if (self.context_dim > 0) != (self.context_len > 0):
            raise ValueError(
                f"context_dim and context_len are set together, got {self.context_dim}, "
                f"{self.context_len}"
            )
        if self.context_dim and self.num_classes:
            raise ValueError("a model is conditioned on classes or on text, not both")

    @property
    def num_patches(self) -> int:
        """The patch tokens per image: ``(img_size // patch_size) ** 2``."""
        return (self.img_size // self.patch_size) ** 2

    @property
    def extras(self) -> int:
        """Tokens before the patches: time, then the class token or the text context."""
        return 1 + (self.num_classes > 0) + self.context_len


# "dydit": the routers adaptive.dydit.attach_routers adds (the model itself builds none).
EXIT_HEADS = ("none", "uem", "lte", "dydit")


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (fractional) timesteps (Vaswani et al. 2017). (B,) -> (B, dim)"""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, _ = x.shape
        # head_dim is derived from qkv so that pruned heads (fewer rows) still reshape right.
        inner = self.qkv.out_features // 3
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, inner // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, N, d)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, d)
        return self.proj(out.transpose(1, 2).reshape(B, N, inner))  # (B, N, D)


class Block(nn.Module):
    def __init__(self, cfg: UViTConfig, skip: bool) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, cfg.num_heads, cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))  # (B, N, D)
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def forward_parts(
        self,
        x: Tensor,
        skip: Tensor | None = None,
        attn: Tensor | None = None,
        mlp: Tensor | None = None,
        mix: Callable[[int, Tensor], Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`forward` with its two residual branches exposed for step-level caching:
        returns (output, attention branch, MLP branch), each (B, N, D). A branch given as
        ``attn`` / ``mlp`` is reused instead of computed (FORA, Learning-to-Cache); ``mix(part,
        fresh)`` (part 0 = attention, 1 = MLP) replaces a computed branch by what it returns
        (Learning-to-Cache's training interpolates it with a cached one). With none given the
        output equals :meth:`forward` bitwise."""
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))  # (B, N, D)
        a = self.attn(self.norm1(x)) if attn is None else attn
        a = a if mix is None or attn is not None else mix(0, a)
        x = x + a
        m = self.mlp(self.norm2(x)) if mlp is None else mlp
        m = m if mix is None or mlp is not None else mix(1, m)
        return x + m, a, m


@dataclass
class UViTState:
    """What runs between blocks: hidden tokens, the skip stack, and the time embedding.

    Every tensor is batch-first, so the executor compacts a state by indexing rows.
    """

    h: Tensor  # (B, N, D)
    temb: Tensor  # (B, D)
    skips: list[Tensor] = field(default_factory=list)  # each (B, N, D)

    def select(self, idx: Tensor) -> UViTState:
        """The state of the rows ``idx``: hidden tokens, time embedding and every skip."""
        return UViTState(self.h[idx], self.temb[idx], [s[idx] for s in self.skips])


class UViT(nn.Module):
    """The U-ViT (module docstring): the layer-wise model contract with every capability."""

    def __init__(self, cfg: UViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D, p, C = cfg.embed_dim, cfg.patch_size, cfg.in_chans
        self.patch_embed = nn.Conv2d(C, D, kernel_size=p, stride=p)
        self.time_embed = (
            nn.Sequential(nn.Linear(D, 4 * D), nn.SiLU(), nn.Linear(4 * D, D))
            if cfg.mlp_time_embed
            else nn.Identity()
        )
        self.label_emb = nn.Embedding(cfg.num_classes + 1, D) if cfg.num_classes > 0 else None
        self.context_embed = nn.Linear(cfg.context_dim, D) if cfg.context_dim > 0 else None
        if cfg.context_dim > 0:
            # The empty prompt's encoder states: the null condition of classifier-free
            # guidance, saved with the weights (U-ViT keeps it beside its checkpoint).
            self.register_buffer("null_context", torch.zeros(cfg.context_len, cfg.context_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.extras + cfg.num_patches, D))
        half = cfg.depth // 2
        self.in_blocks = nn.ModuleList(Block(cfg, skip=False) for _ in range(half))
        self.mid_block = Block(cfg, skip=False)
        self.out_blocks = nn.ModuleList(Block(cfg, skip=True) for _ in range(half))
        self.norm = nn.LayerNorm(D)
        self.decoder_pred = nn.Linear(D, p * p * C)
        self.final_layer = nn.Conv2d(C, C, 3, padding=1) if cfg.conv_out else nn.Identity()
        # DeeDiff's UEMs (one per block) or BERxiT's shared LTE (models.heads), built here
        # so that their initialisation draws in the same order as before they were modules.
        self.uem = UEMHeads(cfg.depth, D, p, C) if cfg.exit_heads == "uem" else None
        self.lte = LTEHead(D) if cfg.exit_heads == "lte" else None
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # The layer-wise model contract (blockloop.model): U-Net-like long skips (DeepCache).
    long_skips = True

    @property
    def depth(self) -> int:
        """The number of blocks (in-blocks, the mid block, out-blocks)."""
        return self.cfg.depth

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the model's input."""
        return (self.cfg.in_chans, self.cfg.img_size, self.cfg.img_size)

    @property
    def num_classes(self) -> int:
        """K for a class-conditional model (label K is the null class), else 0."""
        return self.cfg.num_classes

    @property
    def exit_heads(self) -> str:
        """The learned exit heads it carries: "uem", "lte" or "none"."""
        return self.cfg.exit_heads

    @property
    def blocks(self) -> list[Block]:
        """All blocks in execution order (in-blocks, mid, out-blocks)."""
        return [*self.in_blocks, self.mid_block, *self.out_blocks]

    def null_cond(self) -> Tensor | None:
        """The condition of guidance's unconditional branch: the null class label (a 0-d
        tensor), the empty prompt's context (context_len, context_dim), or None for an
        unconditional model. It broadcasts against a batch of conditions."""
        if self.label_emb is not None:
            return torch.tensor(self.cfg.num_classes, device=self.pos_embed.device)
        if self.context_embed is not None:
            return self.null_context
        return None

    def example_cond(self, batch: int) -> Tensor | None:
        """``batch`` null conditions (for tracing, cost measurement and pruning scores)."""
        null = self.null_cond()
        return None if null is None else null.expand(batch, *null.shape).clone()

    def embed(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> UViTState:
        """Patchify and prepend the time token and the class token or text context.
        x (B, C, H, W), t (B,), cond (B,) labels or (B, context_len, context_dim) -> state."""
        if self.label_emb is not None and cond is None:
            raise ValueError("this model is class-conditional: pass cond (labels; null class = K)")
        if self.context_embed is not None:
            want = (self.cfg.context_len, self.cfg.context_dim)
            if cond is None or cond.ndim != 3 or tuple(cond.shape[1:]) != want:
                got = None if cond is None else tuple(cond.shape)
                raise ValueError(
                    f"this model is text-conditional: pass cond of shape (B, {want[0]}, "
                    f"{want[1]}) (encoded prompts; null_cond() for the empty prompt), got {got}"
                )
        h = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, L, D)
        if self.cfg.time_offset:
            t = t + self.cfg.time_offset
        temb = self.time_embed(timestep_embedding(t, self.cfg.embed_dim))  # (B, D)
        tokens = [temb[:, None]]  # (B, 1, D)
        if self.label_emb is not None:
            tokens.append(self.label_emb(cond.long())[:, None])  # (B, 1, D)
        if self.context_embed is not None:
            tokens.append(self.context_embed(cond.to(h.dtype)))  # (B, context_len, D)
        h = torch.cat([*tokens, h], dim=1) + self.pos_embed  # (B, extras + L, D)
        return UViTState(h=h, temb=temb)

    def block_at(self, i: int, state: UViTState) -> tuple[Block, Tensor | None]:
        """Block ``i`` (0-based, execution order) and the long skip it fuses, popped from
        ``state`` (None for in-blocks and the mid block)."""
        half = self.cfg.depth // 2
        if not 0 <= i < self.cfg.depth:
            raise ValueError(f"block index {i} out of range [0, {self.cfg.depth})")
        if i < half:
            return self.in_blocks[i], None
        if i == half:
            return self.mid_block, None
        return self.out_blocks[i - half - 1], state.skips.pop()

    def run_block(self, i: int, state: UViTState) -> UViTState:
        """Run block ``i`` (0-based, execution order) in place on ``state`` and return it."""
        block, skip = self.block_at(i, state)
        state.h = block(state.h, skip)
        if i < self.cfg.depth // 2:
            state.skips.append(state.h)
        return state

    def block_parts(
        self,
        i: int,
        state: UViTState,
        attn: Tensor | None = None,
        mlp: Tensor | None = None,
        mix: Callable[[int, Tensor], Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Run block ``i`` in place on ``state`` like :meth:`run_block`, reusing the residual
        branches given (see :meth:`Block.forward_parts`); returns the (attention, MLP) branches
        it used."""
        block, skip = self.block_at(i, state)
        state.h, a, m = block.forward_parts(state.h, skip, attn, mlp, mix)
        if i < self.cfg.depth // 2:
            state.skips.append(state.h)
        return a, m

    def _unpatchify(self, x: Tensor) -> Tensor:
        """(B, L, p*p*C) -> (B, C, H, W)"""
        return unpatchify(x, self.cfg.patch_size, self.cfg.in_chans)

    def readout(self, state: UViTState) -> Tensor:
        """The shared output head: eps from any block's state (its hidden tokens alone).
        h (B, N, D) -> (B, C, H, W)"""
        x = self.decoder_pred(self.norm(state.h))[:, self.cfg.extras :]  # (B, L, p*p*C)
        return self.final_layer(self._unpatchify(x))  # (B, C, H, W)

    def exit_inputs(self, state: UViTState) -> tuple[Tensor, Tensor]:
        """What exit heads read (:mod:`models.heads`): the patch tokens (B, L, D) and the time
        embedding (B, D)."""
        return state.h[:, self.cfg.extras :], state.temb

    def uncertainty(self, i: int, state: UViTState) -> Tensor:
        """DeeDiff's UEM map after block ``i``, (B, C, H, W) in (0, 1)
        (:func:`models.heads.uncertainty`)."""
        return uncertainty(self, i, state)

    def lte_score(self, state: UViTState) -> Tensor:
        """BERxiT's LTE score (B,) (:func:`models.heads.lte_score`)."""
        return lte_score(self, state)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """eps (B, C, H, W) of x (B, C, H, W), t (B,) and cond: every block, then the readout."""
        state = self.embed(x, t, cond)  # h: (B, N, D)
        for i in range(self.depth):
            self.run_block(i, state)  # h: (B, N, D)
        return self.readout(state)  # (B, C, H, W)
