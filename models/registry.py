"""The registry of model sizes by name: what a cell's ``model`` field names."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from models.uvit import UViT, UViTConfig

__all__ = ["MIN_GRID", "MODELS", "check_geometry", "make_model"]

# Sizes by name. Geometry (img_size, in_chans, num_classes) comes from the dataset.
MODELS: dict[str, dict[str, Any]] = {
    # CPU default for 8x8 digits: ~1.2M parameters, 16 patch tokens.
    "tiny": dict(patch_size=2, embed_dim=96, depth=9, num_heads=4),
    # U-ViT-S's depth (13 blocks) at the CPU default's width: one block is 7.7% of the FLOPs
    # instead of 11%, so exits are less coarse (~1.7M parameters).
    "tiny13": dict(patch_size=2, embed_dim=96, depth=13, num_heads=4),
    # The 28x28 MNIST benchmark: U-ViT-S/4's geometry (13 blocks, 4x4 patches: 49 tokens at
    # 28x28) at tiny13's width (~1.6M parameters); 0.5 s per 128-image training step on 2 cores.
    "tiny13-p4": dict(patch_size=4, embed_dim=96, depth=13, num_heads=4),
    # Smaller still, for tests and smoke runs.
    "micro": dict(patch_size=2, embed_dim=32, depth=5, num_heads=2),
    # The paper's sizes (U-ViT Table 1; DeeDiff Sec. 5.1).
    "uvit-s2": dict(patch_size=2, embed_dim=512, depth=13, num_heads=8, mlp_time_embed=False),
    "uvit-s4": dict(patch_size=4, embed_dim=512, depth=13, num_heads=8, mlp_time_embed=False),
    "uvit-l2": dict(patch_size=2, embed_dim=1024, depth=21, num_heads=16, mlp_time_embed=False),
    # A DiT (diffusers' DiTTransformer2DModel, adaLN-Zero, no long skips) at the CPU default's
    # width and parameter count: 6 blocks of 96 make 1.23M parameters against tiny's 1.15M
    # (each DiT block carries its own time / label embedding and adaLN modulation).
    "dit-tiny": dict(arch="dit", patch_size=2, embed_dim=96, depth=6, num_heads=4),
    # The 28x28 MNIST DiT: 4x4 patches (49 tokens) at the same width, 8 blocks for tiny13-p4's
    # 1.6M parameters; the MNIST diagnosis's best transformer (docs/findings/mnist.md).
    "dit-p4": dict(arch="dit", patch_size=4, embed_dim=96, depth=8, num_heads=4),
}


# The fewest patches per side a size may cut an image into: below 4 x 4 tokens a transformer
# has next to nothing to attend over (e.g. the 28x28 benchmark's 4x4 patches on 8x8 digits: 4).
MIN_GRID = 4


def check_geometry(name: str, img_size: int) -> None:
    """A ``ValueError`` naming the sizes that fit unless size ``name``'s patch divides
    ``img_size`` into at least :data:`MIN_GRID` patches per side."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid choices: {', '.join(MODELS)}")

    def fits(size: str) -> bool:
        p = MODELS[size]["patch_size"]
        return img_size % p == 0 and img_size // p >= MIN_GRID

    if not fits(name):
        p = MODELS[name]["patch_size"]
        ok = ", ".join(m for m in MODELS if fits(m))
        raise ValueError(
            f"model {name!r} cuts {img_size}x{img_size} images into {p}x{p} patches: not at least "
            f"{MIN_GRID} whole patches per side; valid models for this data set: {ok}"
        )


def make_model(name: str, img_size: int, in_chans: int, num_classes: int = 0, **overrides):
    """Build the registered size ``name`` for images of ``in_chans x img_size x img_size``: a
    :class:`UViT`, or a DiT adapter (:func:`models.dit.make_dit`) for sizes with
    ``arch="dit"``; either is a layer-wise model (:mod:`blockloop.model`)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid choices: {', '.join(MODELS)}")
    size = dict(MODELS[name])
    if size.pop("arch", "uvit") == "dit":
        from models.dit import make_dit

        extra = set(overrides) - {"exit_heads"}
        if extra:
            raise ValueError(
                f"model {name!r} (a DiT) takes no {sorted(extra)}: no text conditioning"
            )
        return make_dit(img_size, in_chans, num_classes, **size, **overrides)
    cfg = UViTConfig(img_size=img_size, in_chans=in_chans, num_classes=num_classes, **size)
    return UViT(replace(cfg, **overrides))
