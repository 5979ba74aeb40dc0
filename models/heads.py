"""Learned exit heads as modules any layer-wise model can carry: DeeDiff's uncertainty estimation
modules (UEMs) and BERxiT's learning-to-exit head (LTE).

A model carries them as two attributes, ``uem`` (:class:`UEMHeads`, one per block) and ``lte``
(:class:`LTEHead`), so their checkpoint keys are ``uem.{i}.weight`` / ``uem.{i}.bias`` and
``lte.weight`` / ``lte.bias`` on every model (the shipped U-ViT checkpoints' keys).
:func:`attach_exit_heads` gives them to any contract model (:mod:`blockloop.model`) that
provides one method::

    tokens, temb = model.exit_inputs(state)   # (B, L, D) patch tokens, (B, D) time embedding

the hidden patch tokens in the layout :func:`models.layout.unpatchify` reads (row-major patches)
and the embedding of the timestep alone. The heads read both detached (DeeDiff Sec. 4.1: the
UEM does not train the backbone through its own loss). Everything else reads the heads through
:func:`uncertainty`, :func:`lte_score` and :func:`exit_heads_of`, never through the model's
class, so the executor, the cost model, the exit policies and the training recipes serve a
U-ViT, a DiT or a user's model alike.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.layout import unpatchify

__all__ = [
    "HEAD_KINDS",
    "LTEHead",
    "UEMHeads",
    "attach_exit_heads",
    "carried_heads",
    "exit_heads_of",
    "lte_score",
    "uncertainty",
]

# The learned exit parts a model can carry ("none": the plain model).
HEAD_KINDS = ("none", "uem", "lte")


class UEMHeads(nn.ModuleList):
    """DeeDiff's UEMs (Tang et al. 2024, arXiv 2309.17074, Sec. 4.1, Eq. 6): after block ``i``,
    ``sigmoid(Linear_i([token ; time embedding]))`` per patch token, ``p * p * C`` outputs each,
    unpatchified to a per-pixel uncertainty map in (0, 1). Timestep-aware through the time
    embedding (the official AdaDiff module is time-blind: zero weights on that half)."""

    def __init__(self, depth: int, dim: int, patch: int, channels: int) -> None:
        super().__init__(nn.Linear(2 * dim, patch * patch * channels) for _ in range(depth))
        self.patch, self.channels = patch, channels

    def uncertainty(self, i: int, tokens: Tensor, temb: Tensor) -> Tensor:
        """The map after block ``i``: tokens (B, L, D), temb (B, D) -> (B, C, H, W)."""
        # Linear_i([token ; temb]) with its weight split into the token and time halves: the
        # time half runs once per row, not per token, and no (B, L, 2D) copy is made (the
        # concatenation was most of the heads' wall-clock, docs/findings/wall-clock.md).
        lin, d = self[i], tokens.shape[-1]
        u = (
            F.linear(tokens, lin.weight[:, :d])
            + F.linear(temb, lin.weight[:, d:], lin.bias)[:, None]
        )
        return torch.sigmoid(unpatchify(u, self.patch, self.channels))  # (B, C, H, W)


class LTEHead(nn.Linear):
    """BERxiT's learning-to-exit module (Xin et al. 2021, Sec. 3.2): one linear layer shared by
    every block on the mean-pooled hidden state, a sigmoid; it predicts the readout's error."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim, 1)

    def score(self, h: Tensor) -> Tensor:
        """h (B, N, D) -> (B,) predicted error in (0, 1)."""
        return torch.sigmoid(self(h.mean(dim=1))).squeeze(-1)


def _geometry(model: Any) -> tuple[int, int, int]:
    """(width D, patch size p, channels C) of ``model``, read from one row through ``embed``."""
    C, H, W = model.input_shape
    dev = next(model.parameters()).device
    with torch.no_grad():
        state = model.embed(
            torch.zeros(1, C, H, W, device=dev), torch.zeros(1, device=dev), model.example_cond(1)
        )
        tokens, temb = model.exit_inputs(state)
    g = math.isqrt(tokens.shape[1])
    if g * g != tokens.shape[1] or H != W or H % g or temb.shape[-1] != tokens.shape[-1]:
        raise ValueError(
            f"exit_inputs must return (B, L, D) patch tokens of a square grid and a (B, D) time "
            f"embedding for {H}x{W} images; got {tuple(tokens.shape)} and {tuple(temb.shape)}"
        )
    return tokens.shape[-1], H // g, C


def attach_exit_heads(model: nn.Module, kind: str, geometry: tuple[int, int, int] | None = None):
    """Give ``model`` (an ``nn.Module`` contract model with ``exit_inputs``) fresh exit heads of
    ``kind`` (:data:`HEAD_KINDS`) and return it. ``geometry`` (width, patch, channels) is read
    from one row through the model when not given. A ``ValueError`` names the valid kinds or
    what the model lacks."""
    if kind not in HEAD_KINDS:
        raise ValueError(f"unknown exit heads {kind!r}; valid choices: {', '.join(HEAD_KINDS)}")
    if kind != "none" and not callable(getattr(model, "exit_inputs", None)):
        raise ValueError(
            f"{type(model).__name__} cannot carry {kind!r} exit heads: it has no "
            "exit_inputs(state) -> (patch tokens (B, L, D), time embedding (B, D))"
        )
    model.uem, model.lte = None, None
    if kind == "none":
        return model
    dim, patch, channels = geometry if geometry is not None else _geometry(model)
    head = UEMHeads(model.depth, dim, patch, channels) if kind == "uem" else LTEHead(dim)
    param = next(model.parameters(), None)
    if param is not None:  # where the model already is (a GPU, bf16)
        head = head.to(device=param.device, dtype=param.dtype)
    setattr(model, kind, head)
    return model


def carried_heads(model: Any) -> str:
    """The head modules ``model`` carries: "uem", "lte" or "none" (its attributes alone; an
    adapter's ``exit_heads`` property reads this)."""
    if isinstance(getattr(model, "uem", None), UEMHeads):
        return "uem"
    if isinstance(getattr(model, "lte", None), LTEHead):
        return "lte"
    return "none"


def exit_heads_of(model: Any) -> str:
    """The exit heads ``model`` carries: "uem", "lte" or "none" (a model whose class says more,
    e.g. the U-ViT's "dydit", answers with its own ``exit_heads``; one that claims "uem" or
    "lte" without carrying these modules has none)."""
    carried = carried_heads(model)
    if carried != "none":
        return carried
    own = getattr(model, "exit_heads", "none")
    return own if isinstance(own, str) and own not in HEAD_KINDS else "none"


def uncertainty(model: Any, i: int, state: Any) -> Tensor:
    """DeeDiff's per-pixel uncertainty (B, C, H, W) after block ``i`` of ``model``'s UEMs."""
    heads = getattr(model, "uem", None)
    if not isinstance(heads, UEMHeads):
        raise ValueError(
            f"this {type(model).__name__} has no UEM heads (train it with --recipe uem)"
        )
    tokens, temb = model.exit_inputs(state)
    return heads.uncertainty(i, tokens.detach(), temb.detach())


def lte_score(model: Any, state: Any) -> Tensor:
    """BERxiT's LTE score (B,) of ``model``'s state (the detached hidden tokens, every one)."""
    head = getattr(model, "lte", None)
    if not isinstance(head, LTEHead):
        raise ValueError(
            f"this {type(model).__name__} has no LTE head (train it with --recipe berxit)"
        )
    return head.score(state.h.detach())
