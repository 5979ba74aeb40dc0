"""Denoiser backbones with a layer-wise interface (see :mod:`models.uvit`)."""

from models.registry import MODELS, check_geometry, make_model
from models.uvit import (
    EXIT_HEADS,
    UViT,
    UViTConfig,
    UViTState,
    timestep_embedding,
)

__all__ = [
    "EXIT_HEADS",
    "MODELS",
    "UViT",
    "UViTConfig",
    "UViTState",
    "check_geometry",
    "make_model",
    "timestep_embedding",
]
