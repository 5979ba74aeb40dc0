"""Structured pruning of the U-ViT and the DiT adapter through torch-pruning's dependency graph.

What is removed: whole attention heads (``qkv`` rows of a head, and the matching ``proj``
inputs) and MLP hidden channels, each by ``ratio``. The embedding width is kept: the exit heads
(UEM, LTE) and the shared output head read it, so they stay consistent untouched. (Width pruning
through torch-pruning broke on the time/class tokens concatenated along the token axis; not
offered until that is solved.) Importance criteria by name (:data:`IMPORTANCES`, each an
:class:`Importance`):

- ``magnitude``: L2 norm of each group's weights (torch-pruning's GroupMagnitudeImportance);
- ``taylor``: first-order Taylor |w * dL/dw| with the gradient of the eps loss at random timesteps;
- ``diff-pruning``: Diff-Pruning's timestep-aware Taylor (Fang et al. 2023, Sec. 3.2): the
  gradient is accumulated over a chosen set of timesteps, each contributing its own loss;
- ``random``: a control.

Heads: a ratio removes ``ceil(ratio * heads)`` whole heads per attention layer (torch-pruning's
rule; 0.3 of 4 heads removes 2), MLP channels ``C - int(C * (1 - ratio))``.

One-shot or iterative: ``rounds = k`` prunes in k steps (torch-pruning's ``iterative_steps``:
ratio * r / k of the channels after round r; heads spread over the rounds so the last round
ends at the one-shot count), re-scoring the importance on the current model before each round
and calling ``between`` (e.g. a fine-tune) after every round but the last.

A pruned model is saved as a *recipe*: base checkpoint id, ratio, criterion, torch-pruning's
pruning history and the head counts, and rebuilt by :func:`replay` on a fresh base model
(torch-pruning's ``load_pruning_history``), never as a pickled module.

Architectures: the suite's U-ViT and a diffusers DiT behind :class:`models.dit.DiTAdapter`
(:mod:`pruning.arch`: which linears hold the heads and channels, where head counts go back).
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import Tensor, nn

from models import UViT
from models.heads import exit_heads_of, lte_score, uncertainty
from pruning.arch import (
    attention_heads,
    example_inputs,
    mlp_inputs,
    unwrapped,
    write_back_heads,
)

__all__ = [
    "DEFAULT_IMPORTANCE",
    "IMPORTANCES",
    "GradientScoring",
    "Importance",
    "PruneResult",
    "check_prune",
    "head_schedule",
    "prune",
    "replay",
]

log = logging.getLogger(__name__)


class Importance(ABC):
    """A pruning criterion, in the style of Torch-Pruning's ``Importance``: :meth:`scorer` is the
    torch-pruning object that ranks each group's channels; a criterion that ranks by gradients
    fills ``.grad`` first in :meth:`prepare`. Register new criteria in :data:`IMPORTANCES`."""

    name: ClassVar[str]
    needs_gradients: ClassVar[bool] = False

    def __init__(self, timesteps: list[int] | None = None) -> None:
        self.timesteps = timesteps  # Diff-Pruning's; criteria that draw timesteps ignore it

    @abstractmethod
    def scorer(self) -> tp.importance.Importance:
        """The torch-pruning importance that scores the groups."""

    def prepare(  # noqa: B027  (optional hook)
        self, model: UViT, data: Tensor, alphas_cumprod: Tensor, batches: int, gen: torch.Generator
    ) -> None:
        """Called once before scoring (with the model in train mode)."""


class Magnitude(Importance):
    """L2 norm of each group's weights (torch-pruning's GroupMagnitudeImportance)."""

    name = "magnitude"

    def scorer(self):
        return tp.importance.GroupMagnitudeImportance(p=2)


class Taylor(Importance):
    """First-order Taylor |w * dL/dw|, the eps loss at uniformly random timesteps."""

    name = "taylor"
    needs_gradients = True

    def scorer(self):
        return tp.importance.GroupTaylorImportance()

    def steps(self, T: int) -> list[int] | None:
        """The timesteps every batch is evaluated at (None: random ones per batch)."""
        return None

    def prepare(self, model, data, alphas_cumprod, batches, gen):
        steps = self.steps(len(alphas_cumprod))
        _accumulate_gradients(model, data, alphas_cumprod, steps, batches, gen)


class DiffPruning(Taylor):
    """Diff-Pruning's timestep-aware Taylor (Fang et al. 2023, Sec. 3.2): every batch at each
    of a set of timesteps (default 10 evenly spaced over [0, T)), each with its own loss."""

    name = "diff-pruning"

    def steps(self, T: int) -> list[int]:
        if self.timesteps is not None:
            return self.timesteps
        return [int(t) for t in torch.linspace(0, T - 1, 10).round()]


class RandomImportance(Importance):
    """A control: random scores."""

    name = "random"

    def scorer(self):
        return tp.importance.RandomImportance()


IMPORTANCES: dict[str, type[Importance]] = {
    c.name: c for c in (Magnitude, Taylor, DiffPruning, RandomImportance)
}
DEFAULT_IMPORTANCE = "diff-pruning"


def check_prune(
    ratio: float, importance: str, rounds: int = 1, round_to: int | None = None
) -> None:
    """The one check of a pruning request: ``ratio`` in [0, 1), a registered criterion,
    ``rounds`` (prune–fine-tune rounds; 1 = one-shot) an integer >= 1, ``round_to`` (the
    multiple an MLP's kept channels are rounded down to) None or an integer >= 2."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise ValueError(f"prune ratio must be in [0, 1), got {ratio!r}")
    if importance not in IMPORTANCES:
        raise ValueError(
            f"unknown importance {importance!r}; valid choices: {', '.join(IMPORTANCES)}"
        )
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"prune rounds must be an integer >= 1 (1 = one-shot), got {rounds!r}")
    if round_to is not None and (type(round_to) is not int or round_to < 2):
        raise ValueError(
            f"round_to must be an integer >= 2 (or None: no rounding), got {round_to!r}"
        )


@dataclass
class PruneResult:
    """A pruned model and what rebuilds it: torch-pruning's pruning ``history`` and the heads
    kept per attention module (``num_heads``)."""

    model: UViT
    history: list  # torch-pruning's [(module name, is_out_channel, idxs), ...]
    num_heads: dict[str, int]  # attention module name -> heads kept


def _forward(model: nn.Module, inputs) -> Tensor:
    """What torch-pruning traces: every block's readout and exit head, summed into one output,
    so that the shared output head (and the UEM / LTE heads) couple to every block's hidden
    state. Tracing the plain forward alone would let width pruning decouple the in-block stream
    from the one the readout sees, breaking early readouts."""
    state = model.embed(*inputs)
    total = 0
    for i in range(model.depth):
        model.run_block(i, state)
        total = total + model.readout(state)
        heads = exit_heads_of(model)
        if heads == "uem":
            total = total + uncertainty(model, i, state)
        if heads == "lte":
            total = total + lte_score(model, state).view(-1, 1, 1, 1)
    return total


def _ignored_layers(model: nn.Module) -> list[nn.Module]:
    """Layers whose *output* channels must not be pruned (torch-pruning's ignored_layers): all but
    the head projections (pruned by whole heads) and the first MLP linear of every block."""
    roots = set(attention_heads(model)) | set(mlp_inputs(model))
    return [
        m
        for m in model.modules()
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.Embedding)) and m not in roots
    ]


def head_schedule(heads: int, ratio: float, rounds: int) -> list[float]:
    """torch-pruning's per-step head ratios (index = step, 0 unused) that remove, in ``rounds``
    steps, the heads one-shot pruning removes (``ceil(ratio * heads)``), spread evenly.

    torch-pruning removes ``ceil(r * current heads)`` at each step, where its linear schedule
    means ``r`` of the *initial* count: with 4 heads, 3 rounds of 0.3 would remove 3 heads, not
    2. Each entry here is (heads to remove now − 0.5) / heads left, which ``ceil`` maps back to
    the intended whole number."""
    total = math.ceil(ratio * heads)
    done = [math.ceil(total * r / rounds - 1e-9) for r in range(rounds + 1)]
    sched = [0.0]
    for r in range(1, rounds + 1):
        now = done[r] - done[r - 1]
        sched.append((now - 0.5) / (heads - done[r - 1]) if now > 0 else 0.0)
    return sched


def _pruner(
    model: nn.Module, importance, ratio: float, rounds: int = 1, round_to: int | None = None
) -> tp.pruner.BasePruner:
    attn = attention_heads(model)
    pruner = tp.pruner.BasePruner(
        model,
        example_inputs(model),
        importance=importance,
        pruning_ratio=ratio,
        num_heads=attn,
        prune_num_heads=True,
        prune_head_dims=False,
        head_pruning_ratio=ratio,
        ignored_layers=_ignored_layers(model),
        unwrapped_parameters=unwrapped(model),
        forward_fn=_forward,
        round_to=round_to,  # MLP channels kept: a multiple of it (heads are whole anyway)
        iterative_steps=rounds,
    )
    heads = set(attn.values())
    if len(heads) != 1:
        raise ValueError(f"pruning needs one head count across blocks, got {sorted(heads)}")
    pruner.per_step_head_pruning_ratio = head_schedule(heads.pop(), ratio, rounds)
    return pruner


def _accumulate_gradients(
    model: UViT,
    data: Tensor,
    alphas_cumprod: Tensor,
    timesteps: list[int] | None,
    batches: int,
    gen: torch.Generator,
) -> None:
    """Sum eps-loss gradients into ``.grad`` (for Taylor importance).

    ``timesteps=None``: each batch at uniformly random timesteps (plain Taylor). Otherwise
    Diff-Pruning: every batch is evaluated at every listed timestep and their gradients summed.
    """
    model.zero_grad()
    for _ in range(batches):
        x0 = data[torch.randint(len(data), (min(64, len(data)),), generator=gen)]
        steps = [None] if timesteps is None else timesteps
        for ts in steps:
            if ts is None:
                t = torch.randint(0, len(alphas_cumprod), (x0.shape[0],), generator=gen)
            else:
                t = torch.full((x0.shape[0],), ts, dtype=torch.long)
            eps = torch.randn(x0.shape, generator=gen)
            a = alphas_cumprod[t].float().view(-1, 1, 1, 1)
            x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
            cond = model.example_cond(x0.shape[0])  # the null condition
            F.mse_loss(model(x_t, t.float(), cond), eps).backward()


@dataclass(frozen=True, eq=False)
class GradientScoring:
    """What the gradient-based criteria score with: real images ``data`` in [-1, 1], the noise
    schedule's ``alphas_cumprod``, Diff-Pruning's ``timesteps`` (default: 10 evenly spaced
    over [0, T)) and the number of ``batches`` of the eps loss. Criteria that need no
    gradients ignore it."""

    data: Tensor | None = None
    alphas_cumprod: Tensor | None = None
    timesteps: list[int] | None = None
    batches: int = 4


def prune(
    model: UViT,
    ratio: float,
    importance: str,
    *,
    seed: int = 0,
    rounds: int = 1,
    between: Callable[[int, UViT], None] | None = None,
    round_to: int | None = None,
    **scoring: Any,
) -> PruneResult:
    """Prune ``model`` in place: attention heads and MLP channels, each by ``ratio``.

    ``scoring``: the fields of :class:`GradientScoring` (``data``, ``alphas_cumprod``,
    ``timesteps``, ``batches``); ``data`` (real images in [-1, 1]) and ``alphas_cumprod`` are
    needed by the gradient-based criteria, ``timesteps`` are Diff-Pruning's. An unknown
    keyword is a TypeError. ``rounds > 1`` prunes iteratively: importance re-scored before
    each round, and ``between(round, model)`` (a fine-tune that must update ``model``'s
    weights in place) run after every round but the last. ``round_to``: keep a multiple of it
    of each MLP's channels (torch-pruning's ``round_to``: it rounds the kept count down, so
    a little more is pruned); GEMM-friendly widths for the CPU and GPU kernels.
    """
    check_prune(ratio, importance, rounds, round_to)
    grads = GradientScoring(**scoring)
    torch.manual_seed(seed)
    criterion = IMPORTANCES[importance](grads.timesteps)
    if criterion.needs_gradients and (grads.data is None or grads.alphas_cumprod is None):
        raise ValueError(f"importance {importance!r} needs data and the noise schedule")
    with torch.enable_grad():  # torch-pruning traces the graph through autograd
        pruner = _pruner(model, criterion.scorer(), ratio, rounds, round_to)
        return _prune_with_grad(model, pruner, criterion, grads, seed, rounds, between)


def _prune_with_grad(
    model: UViT,
    pruner: tp.pruner.BasePruner,
    criterion,
    grads: GradientScoring,
    seed: int,
    rounds: int,
    between: Callable[[int, UViT], None] | None,
) -> PruneResult:
    """:func:`prune`'s rounds with ``pruner`` (built on ``criterion``'s scorer), with autograd
    on: the criterion re-scored on the current model before each round (its gradients drawn
    from a generator seeded ``seed``), torch-pruning's step, the head counts written back,
    ``between`` after every round but the last."""
    gen = torch.Generator().manual_seed(seed)
    for r in range(rounds):
        if criterion.needs_gradients:
            model.train()
            criterion.prepare(model, grads.data, grads.alphas_cumprod, grads.batches, gen)
        pruner.step()
        model.zero_grad(set_to_none=True)
        heads = write_back_heads(model)
        if between is not None and r < rounds - 1:
            between(r, model)
    history = _jsonable(pruner.pruning_history())
    return PruneResult(model.eval(), history, heads)


def replay(model: UViT, history: list, num_heads: dict[str, int]) -> UViT:
    """Re-apply a saved pruning history to a fresh (unpruned) model of the same config."""
    with torch.enable_grad():  # torch-pruning traces the graph through autograd
        dg = tp.DependencyGraph().build_dependency(
            model,
            example_inputs=example_inputs(model),
            forward_fn=_forward,
            unwrapped_parameters=unwrapped(model),
        )
        dg.load_pruning_history([(n, bool(o), list(i)) for n, o, i in history])
    got = write_back_heads(model)
    if got != num_heads:
        raise ValueError(f"replayed head counts {got} differ from the recipe's {num_heads}")
    return model


def _jsonable(history) -> list:
    return [[str(n), bool(o), [int(i) for i in idxs]] for n, o, idxs in history]
