"""A diffusers ``PixArtTransformer2DModel`` behind the layer-wise model contract
(:class:`blockloop.model.LayerwiseModel`).

PixArt-α (Chen et al., "PixArt-α: Fast Training of Diffusion Transformer for Photorealistic
Text-to-Image Synthesis", ICLR 2024, Sec. 2.3) is a DiT conditioned on text by cross-attention
in every block and on time by adaLN-single: one time embedding, projected once to six
modulation vectors (``adaln_single``), shifted per block by a learned table. The state carries
the hidden tokens, that projected modulation, the time embedding (the final layer's shift and
scale) and the projected caption tokens, batch-first, so the executor compacts it like any
other. The contract's two cacheable branches are self-attention and the MLP; the
cross-attention between them is always recomputed (it reads the fresh residual stream). With a
learned variance (``out_channels == 2 * in_channels``) the readout returns the eps half.

Captions enter without an attention mask (every token attends; PixArt's pipeline masks the
T5 padding), so pass captions padded as the model should see them. Only models without
PixArt-α's resolution / aspect-ratio conditioning (the 1024-pixel
checkpoints' ``use_additional_conditions``) are adapted: those need the pixel size of every
latent, which the contract does not carry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from models.dit import pretrained_folder
from models.heads import attach_exit_heads, carried_heads
from models.layout import unpatchify

__all__ = ["PixArtAdapter", "PixArtState", "load_pixart", "tiny_pixart"]


@dataclass
class PixArtState:
    """Between PixArt blocks: hidden tokens and what every block and the final layer read."""

    h: Tensor  # (B, L, D) hidden tokens
    mod: Tensor  # (B, 6 D) adaLN-single's projected time modulation
    temb: Tensor  # (B, D) the time embedding (the final layer's modulation)
    ctx: Tensor  # (B, Lc, D) the projected caption tokens

    def select(self, idx: Tensor) -> PixArtState:
        """The state of the rows ``idx``."""
        return PixArtState(self.h[idx], self.mod[idx], self.temb[idx], self.ctx[idx])


def _modulation(block: nn.Module, state: PixArtState) -> tuple[Tensor, ...]:
    """A block's six adaLN-single modulations (B, 1, D) each: shift, scale and gate of the
    self-attention, then of the MLP (PixArt-alpha Sec. 2.3)."""
    mods = block.scale_shift_table[None] + state.mod.reshape(state.h.shape[0], 6, -1)
    return mods.chunk(6, dim=1)


class PixArtAdapter(nn.Module):
    """``pixart`` (a diffusers ``PixArtTransformer2DModel``) as a text-conditional layer-wise
    model: ``cond`` is the caption's token states (B, Lc, caption_channels); ``null_cond`` the
    ``null_context`` given (default: ``context_len`` zero tokens; PixArt's own pipeline encodes
    the empty prompt, which a user passes here). Block parts for the branch caches, TeaCache's
    modulated signal (:meth:`cache_signal`), UEM / LTE exit heads when ``exit_heads`` names
    them (:mod:`models.heads`); no long skips."""

    def __init__(
        self,
        pixart: nn.Module,
        null_context: Tensor | None = None,
        context_len: int = 8,
        exit_heads: str = "none",
    ) -> None:
        super().__init__()
        cfg = pixart.config
        if cfg.norm_type != "ada_norm_single" or pixart.use_additional_conditions:
            raise ValueError(
                "PixArtAdapter supports PixArt models with norm_type='ada_norm_single' and no "
                f"resolution / aspect-ratio conditioning, got norm_type={cfg.norm_type!r}, "
                f"use_additional_conditions={pixart.use_additional_conditions!r}"
            )
        if pixart.caption_projection is None:
            raise ValueError("PixArtAdapter needs caption_channels (a text-conditional PixArt)")
        self.pixart = pixart
        if null_context is None:
            null_context = torch.zeros(context_len, cfg.caption_channels)
        self.register_buffer("null_context", null_context.float())
        width = cfg.num_attention_heads * cfg.attention_head_dim
        attach_exit_heads(self, exit_heads, (width, cfg.patch_size, cfg.in_channels))

    @property
    def exit_heads(self) -> str:
        """The exit heads it carries: "uem", "lte" or "none"."""
        return carried_heads(self)

    @property
    def depth(self) -> int:
        """The number of transformer blocks."""
        return len(self.pixart.transformer_blocks)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the model's input."""
        cfg = self.pixart.config
        return (cfg.in_channels, cfg.sample_size, cfg.sample_size)

    @property
    def num_classes(self) -> int:
        """0: conditioned on text, not on class labels."""
        return 0

    def null_cond(self) -> Tensor:
        """The unconditional caption (Lc, caption_channels), guidance's other branch."""
        return self.null_context

    def example_cond(self, batch: int) -> Tensor:
        """``batch`` null captions (B, Lc, caption_channels), for tracing and cost measurement."""
        return self.null_context.expand(batch, -1, -1).clone()

    def embed(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> PixArtState:
        """x (B, C, H, W), t (B,), cond (B, Lc, caption_channels) or None -> state."""
        p, b = self.pixart, x.shape[0]
        ctx = self.example_cond(b) if cond is None else cond.expand(b, -1, -1)
        h = p.pos_embed(x)
        mod, temb = p.adaln_single(t, None, batch_size=b, hidden_dtype=h.dtype)
        ctx = p.caption_projection(ctx.to(h.dtype)).view(b, -1, h.shape[-1])
        return PixArtState(h=h, mod=mod, temb=temb, ctx=ctx)

    def run_block(self, i: int, state: PixArtState) -> PixArtState:
        """Run block ``i`` in place on ``state`` and return it."""
        if not 0 <= i < self.depth:
            raise ValueError(f"block index {i} out of range [0, {self.depth})")
        block = self.pixart.transformer_blocks[i]
        state.h = block(state.h, encoder_hidden_states=state.ctx, timestep=state.mod)
        return state

    def block_parts(
        self,
        i: int,
        state: PixArtState,
        attn: Tensor | None = None,
        mlp: Tensor | None = None,
        mix: Callable[[int, Tensor], Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Run block ``i`` in place like :meth:`run_block`, as its gated self-attention and MLP
        branches (``attn`` / ``mlp`` given are reused, ``mix(p, fresh)`` blends a computed one);
        the cross-attention between them is always computed. Returns the branches used."""
        block, h = self.pixart.transformer_blocks[i], state.h
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = _modulation(block, state)
        if attn is None:
            a = gate_msa * block.attn1(block.norm1(h) * (1 + scale_msa) + shift_msa)
            a = mix(0, a) if mix is not None else a
        else:
            a = attn
        h = h + a
        h = h + block.attn2(h, encoder_hidden_states=state.ctx)
        if mlp is None:
            m = gate_mlp * block.ff(block.norm2(h) * (1 + scale_mlp) + shift_mlp)
            m = mix(1, m) if mix is not None else m
        else:
            m = mlp
        state.h = h + m
        return a, m

    def exit_inputs(self, state: PixArtState) -> tuple[Tensor, Tensor]:
        """What exit heads read: the patch tokens (B, L, D) and the time embedding (B, D)."""
        return state.h, state.temb

    def cache_signal(self, state: PixArtState) -> Tensor:
        """TeaCache's signal: block 0's time-modulated input ``norm1(h) * (1 + scale) + shift``
        (B, L, D) (Liu et al. 2024, Sec. 3.3)."""
        block = self.pixart.transformer_blocks[0]
        shift, scale = _modulation(block, state)[:2]
        return block.norm1(state.h) * (1 + scale) + shift

    def readout(self, state: PixArtState) -> Tensor:
        """The time-modulated final layer on any block's state: (B, C, H, W) eps."""
        p = self.pixart
        shift, scale = (p.scale_shift_table[None] + state.temb[:, None]).chunk(2, dim=1)
        h = p.proj_out(p.norm_out(state.h) * (1 + scale) + shift)  # (B, L, p*p*C_out)
        x = unpatchify(h, p.config.patch_size, p.out_channels)
        return x[:, : self.input_shape[0]]  # the eps half of a learned-sigma output

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """eps (B, C, H, W): every block, then the readout."""
        state = self.embed(x, t, cond)
        for i in range(self.depth):
            self.run_block(i, state)
        return self.readout(state)


def tiny_pixart(in_channels: int = 1, sample_size: int = 8, caption_channels: int = 12, **kw):
    """A small random PixArt (2 heads of 8, 3 blocks, patch 2, learned sigma, 12-d captions),
    adapted: for tests. ``kw`` go to ``PixArtTransformer2DModel``."""
    from diffusers import PixArtTransformer2DModel

    cfg = dict(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=in_channels,
        out_channels=2 * in_channels,
        num_layers=3,
        cross_attention_dim=16,
        caption_channels=caption_channels,
        sample_size=sample_size,
        patch_size=2,
        norm_num_groups=1,
        use_additional_conditions=False,
    )
    return PixArtAdapter(PixArtTransformer2DModel(**{**cfg, **kw}).eval())


def load_pixart(folder: str | Path, null_context: Tensor) -> PixArtAdapter:
    """A PixArt from a local ``from_pretrained`` folder (a pipeline's ``transformer`` subfolder
    or the model folder), adapted; a missing folder or another class is a ValueError.
    ``null_context``: the encoded empty prompt (Lc, caption_channels), as PixArt's pipeline
    makes it with its T5 encoder (120 tokens for the released models); captions must have the
    same length. Padding masks are not applied: pad captions to Lc with the encoder's states."""
    from diffusers import PixArtTransformer2DModel

    folder = pretrained_folder(folder, "PixArtTransformer2DModel")
    model = PixArtTransformer2DModel.from_pretrained(folder).eval()
    return PixArtAdapter(model, null_context)
