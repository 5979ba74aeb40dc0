"""A diffusers ``DiTTransformer2DModel`` behind the layer-wise model contract
(:class:`blockloop.model.LayerwiseModel`).

DiT (Peebles & Xie, "Scalable Diffusion Models with Transformers", ICCV 2023) conditions every
block and the final layer on the time + class embedding through adaLN-Zero (Sec. 3.2), and has no
long skips. Its blocks recompute that embedding themselves (each block's ``norm1.emb``), so a
block needs only the hidden tokens, the timestep and the class labels: the state carries all
three, batch-first, and the executor compacts it like U-ViT's. The final layer is modulated by
the embedding as well, which is why the contract's ``readout`` takes the state and not the
hidden tokens alone. With a learned variance (``out_channels == 2 * in_channels``, DiT's
default) the readout returns the eps half.

diffusers is optional (the ``test`` extra installs it); this module imports it only to build a
model from a config or a ``from_pretrained`` folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.heads import HEAD_KINDS, attach_exit_heads, carried_heads
from models.layout import unpatchify

__all__ = ["DiTAdapter", "DiTState", "load_dit", "make_dit", "tiny_dit"]


@dataclass
class DiTState:
    """Between DiT blocks: hidden tokens and the conditioning every block reads."""

    h: Tensor  # (B, L, D)
    t: Tensor  # (B,) timesteps
    y: Tensor  # (B,) class labels (the null class: num_classes)
    temb: Tensor  # (B, D) the timestep's own embedding (exit heads' and routers' input)

    def select(self, idx: Tensor) -> DiTState:
        """The state of the rows ``idx``."""
        return DiTState(self.h[idx], self.t[idx], self.y[idx], self.temb[idx])


class DiTAdapter(nn.Module):
    """``dit`` (a diffusers ``DiTTransformer2DModel`` with ``norm_type="ada_norm_zero"``) as a
    layer-wise model: ``embed`` patchifies, ``run_block(i)`` runs transformer block ``i``,
    ``readout`` applies the adaLN final layer and unpatchifies. ``forward`` equals ``dit``'s
    own forward (its eps half). Block parts (attention / MLP branches) for the branch caches;
    no long skips (DeepCache says what is missing). ``exit_heads`` ("uem" / "lte") attaches
    DeeDiff's UEMs or BERxiT's LTE (:mod:`models.heads`), reading the patch tokens and the
    timestep's own embedding (:meth:`exit_inputs`).

    ``conditional=False`` serves an unconditional model: every row gets the null label (DiT's
    label embedding is then one learned vector) and ``num_classes`` is 0, so the pipeline
    never draws labels for it."""

    def __init__(self, dit: nn.Module, conditional: bool = True, exit_heads: str = "none") -> None:
        super().__init__()
        cfg = dit.config
        if cfg.norm_type != "ada_norm_zero" or not cfg.num_embeds_ada_norm:
            raise ValueError(
                "DiTAdapter supports class-conditional DiTs (norm_type='ada_norm_zero', "
                f"num_embeds_ada_norm > 0), got norm_type={cfg.norm_type!r}, "
                f"num_embeds_ada_norm={cfg.num_embeds_ada_norm!r}"
            )
        self.dit = dit
        self.conditional = conditional
        width = cfg.num_attention_heads * cfg.attention_head_dim
        attach_exit_heads(self, exit_heads, (width, cfg.patch_size, cfg.in_channels))

    @property
    def exit_heads(self) -> str:
        """The exit parts it carries: "uem", "lte", "dydit" (DyDiT's routers) or "none"."""
        return "dydit" if getattr(self, "routers", None) is not None else carried_heads(self)

    @property
    def depth(self) -> int:
        """The number of transformer blocks."""
        return len(self.dit.transformer_blocks)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the model's input."""
        cfg = self.dit.config
        return (cfg.in_channels, cfg.sample_size, cfg.sample_size)

    @property
    def num_classes(self) -> int:
        """K, the number of classes (label K is the null class); 0 when unconditional."""
        return int(self.dit.config.num_embeds_ada_norm) if self.conditional else 0

    def null_cond(self) -> Tensor:
        """The null class (label K), guidance's unconditional branch."""
        k = int(self.dit.config.num_embeds_ada_norm)
        return torch.tensor(k, device=self.dit.proj_out_2.weight.device)

    def example_cond(self, batch: int) -> Tensor:
        """``batch`` null-class labels (for tracing and cost measurement)."""
        return self.null_cond().expand(batch).clone()

    def embed(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> DiTState:
        """x (B, C, H, W), t (B,), cond (B,) labels (None: the null class) -> state."""
        y = self.example_cond(x.shape[0]) if cond is None or not self.conditional else cond.long()
        h = self.dit.pos_embed(x)  # (B, L, D)
        emb = self.dit.transformer_blocks[0].norm1.emb  # the time half of block 0's conditioning
        temb = emb.timestep_embedder(emb.time_proj(t).to(h.dtype))  # once per call, not per read
        return DiTState(h=h, t=t, y=y, temb=temb)

    def run_block(self, i: int, state: DiTState) -> DiTState:
        """Run block ``i`` in place on ``state`` and return it."""
        if not 0 <= i < self.depth:
            raise ValueError(f"block index {i} out of range [0, {self.depth})")
        block = self.dit.transformer_blocks[i]
        state.h = block(state.h, timestep=state.t, class_labels=state.y)
        return state

    def block_parts(
        self,
        i: int,
        state: DiTState,
        attn: Tensor | None = None,
        mlp: Tensor | None = None,
        mix: Callable[[int, Tensor], Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Run block ``i`` in place on ``state`` like :meth:`run_block`, as its two gated
        residual branches: ``attn`` / ``mlp`` given are reused instead of computed, ``mix(p,
        fresh)`` blends a computed branch (Learning-to-Cache's training); returns the (attention,
        MLP) branches used. The adaLN modulation (time + class) is always recomputed: it is the
        cheap part, and the MLP branch's norm reads the fresh residual stream."""
        block, h = self.dit.transformer_blocks[i], state.h
        normed, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1(
            h, state.t, state.y, hidden_dtype=h.dtype
        )
        a = attn if attn is not None else gate_msa[:, None] * block.attn1(normed)
        if mix is not None and attn is None:
            a = mix(0, a)
        h = h + a
        if mlp is None:
            mlp_in = block.norm3(h) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
            m = gate_mlp[:, None] * block.ff(mlp_in)
            m = mix(1, m) if mix is not None else m
        else:
            m = mlp
        state.h = h + m
        return a, m

    def cache_signal(self, state: DiTState) -> Tensor:
        """TeaCache's signal (Liu et al. 2024, Sec. 3.3): block 0's adaLN-modulated input
        ``norm(h) * (1 + scale) + shift`` (B, L, D), as upstream's DiT-family loops read it."""
        block = self.dit.transformer_blocks[0]
        return block.norm1(state.h, state.t, state.y, hidden_dtype=state.h.dtype)[0]

    def exit_inputs(self, state: DiTState) -> tuple[Tensor, Tensor]:
        """What exit heads and DyDiT's routers read: the patch tokens (B, L, D) and the
        embedding of the timestep alone (B, D; the time half of block 0's adaLN conditioning,
        computed once by :meth:`embed`)."""
        return state.h, state.temb

    def readout(self, state: DiTState) -> Tensor:
        """The adaLN-modulated final layer on any block's state: (B, C, H, W) eps."""
        dit, h = self.dit, state.h
        emb = dit.transformer_blocks[0].norm1.emb(state.t, state.y, hidden_dtype=h.dtype)
        shift, scale = dit.proj_out_1(F.silu(emb)).chunk(2, dim=1)  # (B, D) each
        h = dit.norm_out(h) * (1 + scale[:, None]) + shift[:, None]  # (B, L, D)
        x = unpatchify(dit.proj_out_2(h), dit.patch_size, dit.out_channels)
        return x[:, : self.input_shape[0]]  # the eps half of a learned-sigma output

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """eps (B, C, H, W) of x (B, C, H, W), t (B,), cond (B,): every block, then the readout."""
        state = self.embed(x, t, cond)
        for i in range(self.depth):
            self.run_block(i, state)
        return self.readout(state)


def tiny_dit(
    in_channels: int = 1, sample_size: int = 8, num_classes: int = 10, **overrides: Any
) -> DiTAdapter:
    """A small random DiT (2 heads of 16, 4 blocks, patch 2, learned sigma), adapted: for tests
    and the digits default. ``overrides`` go to ``DiTTransformer2DModel``."""
    from diffusers import DiTTransformer2DModel

    kw = dict(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=in_channels,
        out_channels=2 * in_channels,
        num_layers=4,
        sample_size=sample_size,
        patch_size=2,
        num_embeds_ada_norm=num_classes,
        norm_num_groups=1,
    )
    return DiTAdapter(DiTTransformer2DModel(**{**kw, **overrides}).eval())


def make_dit(
    img_size: int,
    in_chans: int,
    num_classes: int,
    *,
    patch_size: int,
    embed_dim: int,
    depth: int,
    num_heads: int,
    exit_heads: str = "none",
) -> DiTAdapter:
    """A fresh DiT of a registered size (:data:`models.MODELS`) for ``in_chans x img_size x
    img_size`` images, trained by the suite like its U-ViTs: adaLN-Zero on the time and class
    embedding (``num_classes`` 0: unconditional, every row the null label), no learned sigma
    (the suite trains eps only). ``exit_heads``: "uem" or "lte" attaches those heads;
    "dydit" attaches none (the DyDiT recipe attaches its routers,
    :func:`adaptive.dydit.attach_routers`)."""
    if exit_heads not in (*HEAD_KINDS, "dydit"):
        raise ValueError(
            f"unknown exit heads {exit_heads!r}; valid choices: {', '.join(HEAD_KINDS)}, dydit"
        )
    if embed_dim % num_heads:
        raise ValueError(f"embed_dim {embed_dim} is not a multiple of num_heads {num_heads}")
    try:
        from diffusers import DiTTransformer2DModel
    except ImportError as e:
        raise ValueError("the DiT models need diffusers: pip install diffusers") from e
    dit = DiTTransformer2DModel(
        num_attention_heads=num_heads,
        attention_head_dim=embed_dim // num_heads,
        in_channels=in_chans,
        out_channels=in_chans,
        num_layers=depth,
        sample_size=img_size,
        patch_size=patch_size,
        num_embeds_ada_norm=max(num_classes, 1),
        norm_num_groups=1,
    )
    for block in dit.transformer_blocks:  # diffusers drops 10% of labels per block in train();
        block.norm1.emb.class_embedder.dropout_prob = 0.0  # the suite's p_uncond does it once
    heads = "none" if exit_heads == "dydit" else exit_heads
    return DiTAdapter(dit, conditional=num_classes > 0, exit_heads=heads)


def load_dit(folder: str | Path) -> DiTAdapter:
    """A DiT from a local ``from_pretrained`` folder (a diffusers pipeline's ``transformer``
    subfolder, or the model folder itself), adapted. A missing folder or another model class is
    a ValueError naming what was found."""
    from diffusers import DiTTransformer2DModel

    folder = pretrained_folder(folder, "DiTTransformer2DModel")
    return DiTAdapter(DiTTransformer2DModel.from_pretrained(folder).eval())


def pretrained_folder(folder: str | Path, class_name: str) -> Path:
    """The model folder of a local ``from_pretrained`` folder (a diffusers pipeline's
    ``transformer`` subfolder, or the folder itself) holding a ``class_name``; a ValueError
    naming what was found when there is no config or it is another class."""
    import json

    folder = Path(folder)
    if (folder / "transformer" / "config.json").exists():
        folder = folder / "transformer"
    if not (folder / "config.json").exists():
        raise ValueError(f"{folder}: no config.json (expected a diffusers {class_name} folder)")
    cls = json.loads((folder / "config.json").read_text()).get("_class_name")
    if cls != class_name:
        raise ValueError(f"{folder}: a {cls!r}, not a {class_name}")
    return folder
