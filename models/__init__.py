"""Denoiser backbones with a layer-wise interface (see :mod:`models.uvit`)."""

from models.uvit import MODELS, UViT, UViTConfig, UViTState, make_model, timestep_embedding

__all__ = ["MODELS", "UViT", "UViTConfig", "UViTState", "make_model", "timestep_embedding"]
