"""Training recipes: the loss a denoiser (and its exit parts) is trained with, by name.

A recipe is called as ``recipe(model, x_t, t, cond, eps) -> (loss, logs)`` where ``eps`` is the
noise that made ``x_t``; ``logs`` holds floats for the progress bar.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["RECIPES", "Recipe", "full_loss", "get_recipe"]

Recipe = Callable[[nn.Module, Tensor, Tensor, Tensor | None, Tensor], tuple[Tensor, dict]]


def full_loss(
    model: nn.Module, x_t: Tensor, t: Tensor, cond: Tensor | None, eps: Tensor
) -> tuple[Tensor, dict]:
    """L_simple (Ho et al. 2020, Eq. 14): MSE between the final layer's eps and the true noise."""
    loss = F.mse_loss(model(x_t, t, cond), eps)
    return loss, {"loss": loss.item()}


RECIPES: dict[str, Recipe] = {"full": full_loss}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; valid choices: {', '.join(RECIPES)}")
    return RECIPES[name]
