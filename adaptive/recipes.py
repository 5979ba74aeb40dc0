"""Training recipes: the loss a denoiser (and its learned exit parts) is trained with, by name.

A recipe's loss is called as ``loss(model, x_t, t, cond, eps, step, **weights) -> (loss, logs)``
where ``eps`` is the noise that made ``x_t`` and ``logs`` holds floats for the progress bar
(``logs["loss"]`` is the total). ``Recipe.heads`` names the exit parts the model must carry
(:data:`models.EXIT_HEADS`). Exit recipes fine-tune from the ``full`` checkpoint, as DeeDiff does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from models import UViT

__all__ = ["RECIPES", "Recipe", "get_recipe"]

LossFn = Callable[..., tuple[Tensor, dict[str, float]]]


@dataclass(frozen=True)
class Recipe:
    name: str
    loss: LossFn
    heads: str = "none"
    finetune: bool = True  # start from the cached `full` checkpoint


def _per_layer_mse(outs: list[Tensor], eps: Tensor) -> Tensor:
    """(depth,) mean squared error of every layer's readout."""
    return torch.stack([F.mse_loss(o, eps) for o in outs])


def full_loss(model: UViT, x_t, t, cond, eps, step: int = 0) -> tuple[Tensor, dict]:
    """L_simple (Ho et al. 2020, Eq. 14): MSE of the final layer's eps."""
    loss = F.mse_loss(model(x_t, t, cond), eps)
    return loss, {"loss": loss.item()}


def layerwise_loss(model: UViT, x_t, t, cond, eps, step: int = 0) -> tuple[Tensor, dict]:
    """Uniform average of every layer's readout MSE (the plain early-exit training loss)."""
    per_layer = _per_layer_mse(model.forward_all(x_t, t, cond), eps)
    loss = per_layer.mean()
    return loss, {"loss": loss.item(), "final": per_layer[-1].item()}


def pabee_loss(model: UViT, x_t, t, cond, eps, step: int = 0) -> tuple[Tensor, dict]:
    """PABEE (Zhou et al. 2020, Eq. 5): layer i's loss weighted by i + 1, normalised."""
    per_layer = _per_layer_mse(model.forward_all(x_t, t, cond), eps)
    w = torch.arange(1, len(per_layer) + 1, dtype=per_layer.dtype, device=per_layer.device)
    loss = (w * per_layer).sum() / w.sum()
    return loss, {"loss": loss.item(), "final": per_layer[-1].item()}


def berxit_loss(model: UViT, x_t, t, cond, eps, step: int = 0) -> tuple[Tensor, dict]:
    """BERxiT (Xin et al. 2021, Sec. 3.2), alternating steps.

    Even steps train the backbone with the layer-wise loss; odd steps train the shared LTE alone
    (the backbone runs without gradients) to regress each layer's error, target
    ``tanh(mean |eps_i - eps|)`` per sample, from the pooled hidden state.
    """
    if step % 2 == 0:
        loss, logs = layerwise_loss(model, x_t, t, cond, eps)
        return loss, logs
    with torch.no_grad():
        state = model.embed(x_t, t, cond)
        feats, targets = [], []
        for i in range(model.depth):
            model.run_block(i, state)
            err = (model.readout(state.h) - eps).abs().flatten(1).mean(1)
            targets.append(torch.tanh(err))
            feats.append(state.h.mean(dim=1))
    pooled = torch.stack(feats)  # (depth, B, D)
    pred = torch.sigmoid(model.lte(pooled)).squeeze(-1)  # (depth, B)
    loss = F.mse_loss(pred, torch.stack(targets))
    return loss, {"loss": loss.item(), "lte": loss.item()}


def uem_loss(
    model: UViT, x_t, t, cond, eps, step: int = 0, lambda_u: float = 1.0, lambda_ual: float = 1.0
) -> tuple[Tensor, dict]:
    """DeeDiff / AdaDiff (Tang et al. 2024, arXiv 2309.17074, Sec. 4, Eq. 6-9).

    - UEM_i predicts a per-pixel uncertainty u_i from the detached h_i (see
      :meth:`models.UViT.uncertainty`); its target is the pseudo-uncertainty
      ``u_hat_i = tanh(|eps_i - eps|)``, detached (0 = exact).
    - ``L_u = mean_i MSE(u_i, u_hat_i)``.
    - ``L_UAL = sum_i mean((1 - u_i) * (eps_i - eps)^2)``: layers (and pixels) the UEM trusts
      are pushed harder. u_i is detached here, so the weight cannot be gamed by raising u_i
      (the paper leaves this implicit; L_u alone trains the UEM).
    - ``loss = L_simple(final layer) + lambda_u * L_u + lambda_UAL * L_UAL`` (official code:
      both weights 1).
    """
    state = model.embed(x_t, t, cond)
    l_u, l_ual = 0.0, 0.0
    for i in range(model.depth):
        model.run_block(i, state)
        eps_i = model.readout(state.h)
        u_i = model.uncertainty(i, state)
        err = eps_i - eps
        l_u = l_u + F.mse_loss(u_i, torch.tanh(err.detach().abs()))
        l_ual = l_ual + ((1 - u_i.detach()) * err.pow(2)).mean()
    l_simple = F.mse_loss(eps_i, eps)
    l_u = l_u / model.depth
    loss = l_simple + lambda_u * l_u + lambda_ual * l_ual
    logs = {"loss": loss.item(), "simple": l_simple.item(), "u": l_u.item(), "ual": l_ual.item()}
    return loss, logs


RECIPES: dict[str, Recipe] = {
    "full": Recipe("full", full_loss, finetune=False),
    "layerwise": Recipe("layerwise", layerwise_loss),
    "pabee": Recipe("pabee", pabee_loss),
    "berxit": Recipe("berxit", berxit_loss, heads="lte"),
    "uem": Recipe("uem", uem_loss, heads="uem"),
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; valid choices: {', '.join(RECIPES)}")
    return RECIPES[name]
