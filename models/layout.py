"""The token layout every patch-token model in the package shares: one home for turning patch
tokens back into pixels (the U-ViT's and the diffusers adapters' readouts, the exit heads)."""

from __future__ import annotations

import math

from torch import Tensor

__all__ = ["unpatchify"]


def unpatchify(x: Tensor, patch: int, channels: int) -> Tensor:
    """Patch tokens of a square image back to pixels: (B, g*g, p*p*C) -> (B, C, g*p, g*p), each
    token's features ordered (row in patch, column in patch, channel). The layout the
    U-ViT, the diffusers adapters and the exit heads read."""
    g = math.isqrt(x.shape[1])
    x = x.reshape(-1, g, g, patch, patch, channels).permute(0, 5, 1, 3, 2, 4)  # (B, C, g, p, g, p)
    return x.reshape(-1, channels, g * patch, g * patch)
