"""Exit policies: after each block, which of the running samples exit now.

A policy sees an :class:`ExitContext` (the block just run, the running rows' hidden state and
timesteps, lazy access to their readout / UEM / LTE outputs) and returns a boolean mask of the
rows that exit plus a per-row score for the trace. Per-row memory (PABEE's counter, CALM's
previous hidden state) lives in ``ctx.memory`` as batch-first tensors, which the executor compacts
together with the rows.

Every policy has one *knob* (its ``knob_name``) with a valid range and a direction, so the
calibrator can bisect it to a target FLOP ratio. Register new policies in :data:`POLICIES`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from adaptive.dydit_policy import DyDiT
from blockloop.contracts import ExitContext, ExitPolicy

__all__ = ["POLICIES", "ExitPolicy", "ExitSpec", "make_policy"]


def _no_exit(ctx: ExitContext) -> tuple[Tensor, Tensor]:
    b = ctx.state.h.shape[0]
    dev = ctx.state.h.device
    return torch.zeros(b, dtype=torch.bool, device=dev), torch.full((b,), math.nan, device=dev)


class Full(ExitPolicy):
    """Never exits: the reference computation."""

    name = "full"
    recipe = "full"
    exits = False  # the executor skips decide and its per-block host sync

    def decide(self, ctx):
        return _no_exit(ctx)


class Static(ExitPolicy):
    """Every sample exits after block ``block`` (0-based)."""

    name = "static"
    knob_name = "block"
    knob_range = (0, 64)
    knob_default = 4
    integer_knob = True

    def decide(self, ctx):
        mask, score = _no_exit(ctx)
        return mask | (ctx.layer >= self.knob), score


class TimeSchedule(ExitPolicy):
    """ASE-style time-dependent static exit (Moon et al. 2023): the number of blocks is a fixed
    function of t, full depth at t = 0 falling linearly to ``(1 - drop) * depth`` at t = T - 1.
    """

    name = "ase"
    knob_name = "drop"
    knob_default = 0.5
    knob_direction = -1

    def exit_block(self, t: Tensor, depth: int, T: int) -> Tensor:
        used = torch.ceil(depth * (1 - self.knob * t.float() / (T - 1)))
        return used.clamp(min=1).long() - 1

    def decide(self, ctx):
        eb = self.exit_block(ctx.t, ctx.model.depth, ctx.T)
        return ctx.layer >= eb, eb.float()


class CALM(ExitPolicy):
    """CALM hidden-state saturation (Schuster et al. 2022, Sec. 3.2): exit when the cosine
    similarity of consecutive hidden states (all tokens, per sample) exceeds ``lambda``."""

    name = "calm"
    knob_name = "lambda"
    knob_default = 0.99
    knob_range = (-1.0, 1.0)

    def begin(self, ctx):
        ctx.memory["prev"] = ctx.state.h.flatten(1)

    def decide(self, ctx):
        h = ctx.state.h.flatten(1)
        sim = F.cosine_similarity(h, ctx.memory["prev"], dim=1)
        ctx.memory["prev"] = h
        return sim > self.knob, sim


class PABEE(ExitPolicy):
    """PABEE patience (Zhou et al. 2020, Sec. 3.2), adapted to a regression output: a layer
    "agrees" when its readout changed by less than ``delta`` (mean |eps_i - eps_{i-1}|);
    exit after ``patience`` consecutive agreeing layers. Needs every layer's readout."""

    name = "pabee"
    recipe = "pabee"
    knob_name = "delta"
    knob_default = 0.05
    knob_range = (0.0, 4.0)
    knob_direction = -1

    def __init__(self, knob: float | None = None, patience: int = 2) -> None:
        super().__init__(knob)
        self.patience = _check_patience(self.name, patience)

    def __repr__(self) -> str:
        return f"PABEE(delta={self.knob:g}, patience={self.patience})"

    def decide(self, ctx):
        eps = ctx.readout()
        b = eps.shape[0]
        if "prev" not in ctx.memory:
            ctx.memory["count"] = torch.zeros(b, dtype=torch.long, device=eps.device)
            change = torch.full((b,), math.inf, device=eps.device)
        else:
            change = (eps - ctx.memory["prev"]).abs().flatten(1).mean(1)
        ctx.memory["prev"] = eps
        agree = change < self.knob
        ctx.memory["count"] = torch.where(agree, ctx.memory["count"] + 1, 0)
        return ctx.memory["count"] >= self.patience, change


class BERxiT(ExitPolicy):
    """BERxiT learning-to-exit (Xin et al. 2021): exit when the shared LTE's predicted error of
    the current readout is below ``tau``."""

    name = "berxit"
    knob_name = "tau"
    knob_default = 0.2
    knob_direction = -1
    heads = "lte"
    recipe = "berxit"

    def decide(self, ctx):
        score = ctx.lte()
        return score < self.knob, score


def _check_patience(name: str, patience: object) -> int:
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        raise ValueError(f"{name}: patience must be an integer >= 1, got {patience!r}")
    return patience


class UEM(ExitPolicy):
    """DeeDiff / AdaDiff (arXiv 2309.17074, Sec. 4.1; official ``libs/uvit.py``): exit when the
    mean UEM uncertainty over the sample's pixels is below ``tau``. The paper's thresholds on
    certainty 1 - u (CIFAR-10 0.92, CelebA 0.95) correspond to ``tau = 0.08``, ``0.05``.

    ``patience`` is the official rule: in the in-blocks a sample exits the ``patience``-th time
    its uncertainty is below ``tau`` (not necessarily on consecutive blocks; official: 2); the
    mid and out blocks exit at once. ``patience=1`` exits at the first confident block.

    Decisions are per sample. The official evaluation decides on the mean over the whole batch
    and runs at batch 1, where the two coincide: this policy reproduces the official batch-1
    decisions at any batch size (see :class:`UEMOfficial` for the batch-mean rule itself).
    """

    name = "uem"
    knob_name = "tau"
    knob_default = 0.08
    knob_direction = -1
    heads = "uem"
    recipe = "uem"
    revision = 1  # 1: official patience (before: patience 1)

    def __init__(self, knob: float | None = None, patience: int = 2) -> None:
        super().__init__(knob)
        self.patience = _check_patience(self.name, patience)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(tau={self.knob:g}, patience={self.patience})"

    def begin(self, ctx):
        ctx.memory["passes"] = torch.zeros(
            ctx.state.h.shape[0], dtype=torch.long, device=ctx.state.h.device
        )

    def decide(self, ctx):
        score = ctx.uncertainty().flatten(1).mean(1)  # (b,)
        if self.batch_mean:
            score = score.mean().expand_as(score)
        below = score < self.knob
        if ctx.layer < ctx.model.depth // 2:  # in-blocks: patience
            ctx.memory["passes"] = ctx.memory["passes"] + below.long()
            return below & (ctx.memory["passes"] >= self.patience), score
        return below, score


class UEMOfficial(UEM):
    """The official AdaDiff evaluation rule: :class:`UEM` with patience 2, but one decision
    for the whole batch, on the batch's mean uncertainty (``torch.mean(lte_val.view(-1))``).

    At batch 1 it equals ``uem``; at a real batch it shows what batch-mean decisions cost: one
    hard sample keeps the whole batch running, one easy batch exits every sample together.
    """

    name = "uem-official"
    batch_mean = True
    revision = 0

    def __init__(self, knob: float | None = None, patience: int = 2) -> None:
        if patience != 2:
            raise ValueError(f"uem-official: the official patience is 2, got {patience!r}")
        super().__init__(knob, patience)


class DuoDiff(ExitPolicy):
    """DuoDiff (Fernandez et al. 2024): a shallow exit at block ``shallow`` for the noisy steps
    ``t >= switch * (T - 1)``, the full network below the switch."""

    name = "duodiff"
    knob_name = "switch"
    knob_default = 0.5

    def __init__(self, knob: float | None = None, shallow: int = 2) -> None:
        super().__init__(knob)
        if shallow < 0:
            raise ValueError(f"duodiff: shallow block must be >= 0, got {shallow}")
        self.shallow = shallow

    def __repr__(self) -> str:
        return f"DuoDiff(switch={self.knob:g}, shallow={self.shallow})"

    def decide(self, ctx):
        noisy = ctx.t >= self.knob * (ctx.T - 1)
        return noisy & (ctx.layer >= self.shallow), noisy.float()


POLICIES: dict[str, type[ExitPolicy]] = {
    cls.name: cls
    for cls in (Full, Static, TimeSchedule, CALM, PABEE, BERxiT, UEM, UEMOfficial, DuoDiff, DyDiT)
}


def make_policy(name: str, knob: float | None = None, **options) -> ExitPolicy:
    """Build the registered policy ``name`` (see :data:`POLICIES`) with its knob."""
    if name not in POLICIES:
        raise ValueError(f"unknown exit policy {name!r}; valid choices: {', '.join(POLICIES)}")
    try:
        return POLICIES[name](knob, **options)
    except TypeError as e:
        raise ValueError(f"bad options for policy {name!r}: {e}") from e


@dataclass(frozen=True)
class ExitSpec:
    """An exit policy by registry name with its knob (None: the policy's default, or the one a
    calibration finds) and keyword options: what a cell, the calibrator and the pipeline pass
    around instead of the three separately. :meth:`build` validates by constructing it."""

    name: str = "full"
    knob: float | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def build(self) -> ExitPolicy:
        """The policy this spec names, constructed (``ValueError`` for a bad name or options)."""
        return make_policy(self.name, self.knob, **self.options)

    def with_knob(self, knob: float | None) -> ExitSpec:
        """This spec with its knob replaced by ``knob``."""
        return replace(self, knob=knob)

    @property
    def policy_class(self) -> type[ExitPolicy]:
        """The registered :class:`ExitPolicy` class of ``name`` (``ValueError`` if unknown)."""
        if self.name not in POLICIES:
            raise ValueError(
                f"unknown exit policy {self.name!r}; valid choices: {', '.join(POLICIES)}"
            )
        return POLICIES[self.name]
