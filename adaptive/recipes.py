"""Training recipes: the loss a denoiser (and its learned exit parts) is trained with, by name.

A recipe's loss is called as ``loss(model, x_t, t, cond, eps, step, **weights) -> (loss, logs)``
where ``eps`` is the noise that made ``x_t`` and ``logs`` holds floats for the progress bar
(``logs["loss"]`` is the total). ``Recipe.heads`` names the exit parts the model must carry
(:data:`models.EXIT_HEADS`); ``Recipe.weights`` the loss weights it takes from the training
config. Exit recipes (and the ``full-ft`` control) fine-tune the ``full`` checkpoint, as DeeDiff
fine-tunes a converged U-ViT.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from adaptive.dydit import attach_routers, dydit_loss
from blockloop.contracts import ExitPolicy
from blockloop.model import LayerwiseModel, forward_all
from models.heads import lte_score, uncertainty

__all__ = [
    "LOSS_WEIGHTS",
    "RECIPES",
    "UAL_WEIGHTINGS",
    "Recipe",
    "UEMLoss",
    "check_pairing",
    "get_recipe",
    "uem_loss",
]

LossFn = Callable[..., tuple[Tensor, dict[str, float]]]


@dataclass(frozen=True)
class Recipe:
    """A training recipe by name: its ``loss`` (called as in the module docstring), the exit
    parts it trains (``heads``), whether it fine-tunes the ``full`` checkpoint, the config fields
    passed to the loss (``weights``), its ``revision`` (part of cache keys) and ``prepare``, which
    adds learned parts the model does not build itself."""

    name: str
    loss: LossFn
    heads: str = "none"
    finetune: bool = True  # start from the cached `full` checkpoint
    # The training-config fields passed to ``loss`` as keyword arguments (its loss weights).
    weights: tuple[str, ...] = ()
    # Bumped when the recipe's meaning changes, so checkpoints and grid records made under the
    # old meaning get new keys (0 keeps the keys of before revisions existed).
    revision: int = 0
    # Adds the recipe's learned parts that the model does not build itself (DyDiT's routers).
    prepare: Callable[[torch.nn.Module], object] | None = None  # a U-ViT or a DiT


def _per_layer_mse(outs: list[Tensor], eps: Tensor) -> Tensor:
    """(depth,) mean squared error of every layer's readout."""
    return torch.stack([F.mse_loss(o, eps) for o in outs])


def full_loss(model: LayerwiseModel, x_t, t, cond, eps, step: int = 0) -> tuple[Tensor, dict]:
    """L_simple (Ho et al. 2020, Eq. 14): MSE of the final layer's eps."""
    loss = F.mse_loss(model(x_t, t, cond), eps)
    return loss, {"loss": loss.item()}


def layerwise_loss(model: LayerwiseModel, x_t, t, cond, eps, step: int = 0) -> tuple[Tensor, dict]:
    """Uniform average of every layer's readout MSE (the plain early-exit training loss)."""
    per_layer = _per_layer_mse(forward_all(model, x_t, t, cond), eps)
    loss = per_layer.mean()
    return loss, {"loss": loss.item(), "final": per_layer[-1].item()}


def pabee_loss(model: LayerwiseModel, x_t, t, cond, eps, step: int = 0) -> tuple[Tensor, dict]:
    """PABEE (Zhou et al. 2020, Eq. 5): layer i's loss weighted by i + 1, normalised."""
    per_layer = _per_layer_mse(forward_all(model, x_t, t, cond), eps)
    w = torch.arange(1, len(per_layer) + 1, dtype=per_layer.dtype, device=per_layer.device)
    loss = (w * per_layer).sum() / w.sum()
    return loss, {"loss": loss.item(), "final": per_layer[-1].item()}


def berxit_loss(model: LayerwiseModel, x_t, t, cond, eps, step: int = 0) -> tuple[Tensor, dict]:
    """BERxiT (Xin et al. 2021, Sec. 3.2), alternating steps.

    Even steps train the backbone with the layer-wise loss; odd steps train the shared LTE alone
    (the backbone runs without gradients) to regress each layer's error, target
    ``tanh(mean |eps_i - eps|)`` per sample, from the pooled hidden state.
    """
    if step % 2 == 0:
        loss, logs = layerwise_loss(model, x_t, t, cond, eps)
        return loss, logs
    preds, targets = [], []
    with torch.no_grad():
        state = model.embed(x_t, t, cond)
        for i in range(model.depth):
            model.run_block(i, state)
            err = (model.readout(state) - eps).abs().flatten(1).mean(1)
            targets.append(torch.tanh(err))
            with torch.enable_grad():  # the head alone learns (it reads the state detached)
                preds.append(lte_score(model, state))
    loss = F.mse_loss(torch.stack(preds), torch.stack(targets))  # (depth, B) each
    return loss, {"loss": loss.item(), "lte": loss.item()}


UAL_WEIGHTINGS = ("official", "summed")


class UEMLoss:
    """DeeDiff / AdaDiff (Tang et al. 2024, arXiv 2309.17074, Sec. 4, Eq. 6-9), as the official
    code computes it (github.com/Tangshengku/AdaDiff, ``sde.py``: ``LSimple``, ``mos_lte``,
    ``mos_layer_wise``).

    - UEM_i predicts a per-pixel uncertainty u_i from the detached h_i (see
      :func:`models.heads.uncertainty`); its target is the pseudo-uncertainty
      ``u_hat_i = tanh(|eps_i - eps|)``, detached (0 = exact). The official module predicts the
      certainty ``1 - u``; the MSE is the same.
    - ``L_u = mean_i MSE(u_i, u_hat_i)``.
    - ``L_UAL``, by ``weighting`` (chosen when the loss is made):

      - ``"official"``: ``c_i = mean(1 - u_i)`` over the whole batch and every pixel,
        ``w_i = c_i / sum_j c_j`` (the last layer included), ``L_UAL = sum_i w_i MSE(eps_i, eps)``.
        As in the official code the weights are *not* detached, so L_UAL also trains the UEMs
        (towards certainty on the layers whose error is below the weighted mean).
      - ``"summed"``: ``sum_i mean((1 - u_i) * (eps_i - eps)^2)`` with u_i detached: the paper's
        notation read literally, unnormalised, so the layer-wise term outweighs L_simple about
        depth-fold. This project's earlier default; kept for the ablation.

    - ``loss = L_simple(final layer) + lambda_u * L_u + lambda_UAL * L_UAL`` (official: 1 and 1;
      ``lambda_UAL = 0`` is the "L_u only" ablation: the backbone sees L_simple alone).

    Still different from the official recipe (and why): the UEM also sees the time embedding
    (the paper's Eq. 6 feeds it; the official module is time-blind, which
    :mod:`models.official` maps exactly with zero weights); the fine-tune length, learning-rate
    schedule and batch are this project's (CPU budget; official: 75k-200k steps at batch 512,
    constant lr 4e-4 after 2.5k warm-up steps, fp16).
    """

    def __init__(self, weighting: str = "official") -> None:
        if weighting not in UAL_WEIGHTINGS:
            raise ValueError(
                f"unknown UAL weighting {weighting!r}; valid: {', '.join(UAL_WEIGHTINGS)}"
            )
        self.weighting = weighting

    def __call__(
        self,
        model: LayerwiseModel,
        x_t,
        t,
        cond,
        eps,
        step: int = 0,
        lambda_u: float = 1.0,
        lambda_ual: float = 1.0,
    ) -> tuple[Tensor, dict]:
        """The recipe loss contract (module docstring); ``step`` is unused (no alternation)."""
        official = self.weighting == "official"
        state = model.embed(x_t, t, cond)
        mse, l_u, certainty, l_summed = [], 0.0, [], 0.0
        for i in range(model.depth):
            model.run_block(i, state)
            eps_i = model.readout(state)
            u_i = uncertainty(model, i, state)
            err = eps_i - eps
            mse.append(err.pow(2).mean())
            l_u = l_u + F.mse_loss(u_i, torch.tanh(err.detach().abs()))
            if official:
                certainty.append((1 - u_i).mean())
            else:
                l_summed = l_summed + ((1 - u_i.detach()) * err.pow(2)).mean()
        l_simple = mse[-1]
        l_u = l_u / model.depth
        if official:
            c = torch.stack(certainty)
            l_ual = (c / c.sum() * torch.stack(mse)).sum()
        else:
            l_ual = l_summed
        loss = l_simple + lambda_u * l_u + lambda_ual * l_ual
        logs = {
            "loss": loss.item(),
            "simple": l_simple.item(),
            "u": l_u.item(),
            "ual": l_ual.item(),
        }
        return loss, logs


uem_loss = UEMLoss("official")  # the DeeDiff recipe's loss


# Loss weights a recipe may take (TrainConfig and Cell fields of these names feed them).
LOSS_WEIGHTS = ("lambda_u", "lambda_ual")

RECIPES: dict[str, Recipe] = {
    "full": Recipe("full", full_loss, finetune=False),
    # The equally-trained control: the `full` model fine-tuned for the exit recipes' extra steps
    # with L_simple alone, so "does UAL help the full model?" is asked at equal training.
    "full-ft": Recipe("full-ft", full_loss),
    "layerwise": Recipe("layerwise", layerwise_loss),
    "pabee": Recipe("pabee", pabee_loss),
    "berxit": Recipe("berxit", berxit_loss, heads="lte"),
    # Revision 1: the official normalised UAL (revision 0 was today's `uem-summed`).
    "uem": Recipe("uem", UEMLoss("official"), "uem", weights=LOSS_WEIGHTS, revision=1),
    "uem-summed": Recipe("uem-summed", UEMLoss("summed"), "uem", weights=LOSS_WEIGHTS),
    # DyDiT (adaptive.dydit): dynamic width and tokens, trained for the config's flop_target.
    **{
        name: Recipe(
            name,
            dydit_loss,
            "dydit",
            weights=("flop_target", "finetune_steps"),
            prepare=functools.partial(attach_routers, mode=mode),
        )
        for name, mode in (("dydit", "both"), ("dydit-width", "width"), ("dydit-token", "token"))
    },
}


def check_pairing(policy: type[ExitPolicy], recipe: str) -> None:
    """Raise ``ValueError`` unless ``recipe`` trains the exit heads ``policy`` needs."""
    if policy.heads != "none" and get_recipe(recipe).heads != policy.heads:
        fits = [r for r, rec in RECIPES.items() if rec.heads == policy.heads]
        raise ValueError(f"policy {policy.name!r} needs recipe {' or '.join(fits)}, got {recipe!r}")


def get_recipe(name: str) -> Recipe:
    """The recipe ``name`` of :data:`RECIPES` (``ValueError`` naming the choices if unknown)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; valid choices: {', '.join(RECIPES)}")
    return RECIPES[name]
