"""The contracts that plug into the block loop (:class:`blockloop.executor.EarlyExitDenoiser`):
what an exit policy sees after a block (:class:`ExitContext`), the exit-policy and cache-policy
base classes, and the rule for composing them.

Exit policies (:mod:`adaptive.policies`) and step-level caches (:mod:`caching.policies`) derive
from these classes; neither package imports the other, and the executor imports neither (it
only knows these contracts), so a policy or cache written outside the package plugs in the same
way (``docs/design.md``, "Layers").
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor

from blockloop.cost import CostModel, FlopMeter
from blockloop.model import BlockState, LayerwiseModel, require
from models.heads import lte_score, uncertainty

__all__ = ["CachePolicy", "ExitContext", "ExitPolicy", "check_composition"]


@dataclass
class ExitContext:
    """What a policy sees after block ``layer`` for the ``b`` rows still running.

    Every output a policy reads through it is computed for the running rows only, at most once,
    and its FLOPs are added to ``meter``: exit-head overhead is never free."""

    model: LayerwiseModel
    layer: int
    state: BlockState
    t: Tensor  # (b,) model time
    T: int
    memory: dict[str, Tensor]
    costs: CostModel
    meter: FlopMeter
    _readout: Tensor | None = field(default=None, repr=False)

    def readout(self) -> Tensor:
        """eps read out at this block for every running row (computed once, FLOPs counted)."""
        if self._readout is None:
            self._readout = self.model.readout(self.state)
            self.meter.add(self.costs.readout * self.t.shape[0])
        return self._readout

    @property
    def computed_readout(self) -> Tensor | None:
        """The readout if the policy already asked for it (the executor reuses it), else None."""
        return self._readout

    def uncertainty(self) -> Tensor:
        """DeeDiff UEM map (b, C, H, W) at this block (FLOPs counted)."""
        self.meter.add(self.costs.uem[self.layer] * self.t.shape[0])
        return uncertainty(self.model, self.layer, self.state)

    def lte(self) -> Tensor:
        """BERxiT LTE score (b,) at this block (FLOPs counted)."""
        self.meter.add(self.costs.lte * self.t.shape[0])
        return lte_score(self.model, self.state)


class ExitPolicy(ABC):
    """The contract between an exit rule and the executor.

    Per denoiser call the executor calls :meth:`begin` once (after embedding, ``ctx.layer ==
    -1``), then :meth:`decide` after every block but the last, with an :class:`ExitContext` for
    the rows still running. ``decide`` returns ``(mask, score)``: a bool tensor (b,) of the rows
    that exit after this block and a float tensor (b,) recorded in the trace for them (NaN when
    the rule has no score). A policy

    - reads model outputs only through the context (``ctx.readout()``, ``ctx.uncertainty()``,
      ``ctx.lte()``), so their FLOPs are counted;
    - keeps per-row state only in ``ctx.memory`` (batch-first tensors the executor compacts
      with the rows), never on ``self``, so one policy object serves any batch;
    - decides per row unless ``batch_mean`` says the rule is one decision for the batch;
    - declares its one knob (``knob_name``, ``knob_range``, ``knob_direction``: +1 when a
      larger knob runs more blocks) so the calibrator can search it, and the learned exit parts
      it needs (``heads``), checked against the model by :meth:`check_model`.

    Knob and options are validated in ``__init__`` (a ``ValueError`` naming the valid range).
    Bump ``revision`` when a rule's meaning changes: records made under the old rule get new
    keys. Register new policies in :data:`POLICIES`.
    """

    name: ClassVar[str]
    knob_name: ClassVar[str | None] = None
    knob_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    knob_default: ClassVar[float | None] = None
    # +1: a larger knob runs more blocks (more FLOPs); -1: fewer.
    knob_direction: ClassVar[int] = 1
    integer_knob: ClassVar[bool] = False
    heads: ClassVar[str] = "none"  # learned exit parts the model must carry
    # The training recipe this policy runs on by default: its own where it has one, else the
    # plain layer-wise model (a static or scheduled exit needs trained early readouts).
    recipe: ClassVar[str] = "layerwise"
    # Bumped when a policy's meaning changes, so grid records made under the old one get new keys.
    revision: ClassVar[int] = 0
    # One decision for the whole batch (the official AdaDiff rule) instead of one per row.
    batch_mean: ClassVar[bool] = False
    # False: the rule never exits (the executor skips decide); True for every exit rule.
    exits: ClassVar[bool] = True
    # True: the policy runs each block itself (:meth:`run_block`: dynamic width, DyDiT).
    runs_blocks: ClassVar[bool] = False

    def __init__(self, knob: float | None = None) -> None:
        if self.knob_name is None:
            if knob is not None:
                raise ValueError(f"policy {self.name!r} has no knob, got {knob!r}")
            self.knob = None
            return
        knob = self.knob_default if knob is None else knob
        lo, hi = self.knob_range
        if not (isinstance(knob, (int, float)) and lo <= knob <= hi):
            raise ValueError(f"{self.name}: {self.knob_name} must be in [{lo}, {hi}], got {knob!r}")
        if self.integer_knob and knob != int(knob):
            raise ValueError(f"{self.name}: {self.knob_name} must be an integer, got {knob!r}")
        self.knob = int(knob) if self.integer_knob else float(knob)

    def __repr__(self) -> str:
        knob = "" if self.knob_name is None else f"{self.knob_name}={self.knob:g}"
        return f"{type(self).__name__}({knob})"

    def check_model(self, exit_heads: str, depth: int, name: str | None = None) -> None:
        """Raise ``ValueError`` unless a model with these exit heads and this many blocks can
        run the policy (its learned heads; an integer knob is a 0-based block index).
        ``name``: the model's registry name, for the message."""
        if self.heads != "none" and exit_heads != self.heads:
            raise ValueError(
                f"policy {self.name!r} needs a model trained with its heads "
                f"({self.heads!r}); this model has {exit_heads!r}"
            )
        if self.integer_knob and self.knob is not None and self.knob >= depth:
            raise ValueError(
                f"{self.name}: {self.knob_name} is a 0-based block index, in [0, {depth - 1}] "
                f"for {f'model {name!r}' if name else f'a {depth}-block model'}; got {self.knob}"
            )

    def begin(self, ctx: ExitContext) -> None:  # noqa: B027  (optional hook)
        """Called once per denoiser call after embedding (ctx.layer == -1)."""

    def run_block(self, model: LayerwiseModel, i: int, state: BlockState) -> float:
        """Run block ``i`` in place on ``state`` and return the FLOPs executed (only policies
        with ``runs_blocks``; the executor runs the model's blocks for every other)."""
        raise NotImplementedError(f"policy {self.name!r} does not run blocks")

    @abstractmethod
    def decide(self, ctx: ExitContext) -> tuple[Tensor, Tensor]:
        """(exit mask (b,) bool, score (b,) float) for the running rows after ``ctx.layer``."""


class CachePolicy(ABC):
    """The contract between a step-level cache and the executor (see the module docstring).

    Per-run state lives on the policy object (one object per executor); :meth:`reset` clears it.
    Knob and options are validated in ``__init__`` (a ``ValueError`` naming the valid range).
    Bump ``revision`` when a rule's meaning changes (records made under it get new keys).
    """

    name: ClassVar[str]
    knob_name: ClassVar[str]
    knob_range: ClassVar[tuple[float, float]]
    knob_default: ClassVar[float]
    knob_direction: ClassVar[int] = -1  # a larger knob reuses more (fewer FLOPs)
    integer_knob: ClassVar[bool] = False
    per_row: ClassVar[bool] = False  # decides per row: composes with exits
    needs_router: ClassVar[bool] = False  # a learned router (Learning-to-Cache)
    needs_fit: ClassVar[bool] = False  # options fitted per model x sampler (TeaCache's rescale)
    # With needs_fit: the options :meth:`fit` returns (the pipeline caches them under
    # ``fit_kind``, keyed by model, sampler, steps and guidance).
    fitted: ClassVar[tuple[str, ...]] = ()
    fit_kind: ClassVar[str] = ""
    # Options the fit depends on (passed to :meth:`fit` and part of its artifact key when set).
    fit_inputs: ClassVar[tuple[str, ...]] = ()
    # Optional model capabilities the rule needs (blockloop.model.CAPABILITIES).
    requires: ClassVar[tuple[str, ...]] = ()
    revision: ClassVar[int] = 0

    def __init__(self, knob: float | None = None) -> None:
        self.knob = self.check_knob(knob)
        self.model: LayerwiseModel | None = None
        self.costs: CostModel | None = None
        self.peak_bytes = 0  # the most bytes the cache held at once, over every run
        self.plan_flops = 0.0  # FLOPs the last plan executed (a signal it computed), metered
        self.reused = 0.0  # reused (row x block) FLOPs-weighted units, over every run
        self.total = 0.0
        self.reset()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.knob_name}={self.knob:g})"

    @classmethod
    def check_knob(cls, knob: float | None) -> float:
        """The knob (its default for None) if it is a number in ``knob_range``, else a
        ``ValueError`` naming the range."""
        knob = cls.knob_default if knob is None else knob
        lo, hi = cls.knob_range
        ok = isinstance(knob, (int, float)) and not isinstance(knob, bool)
        if not (ok and math.isfinite(knob) and lo <= knob <= hi):
            raise ValueError(f"{cls.name}: {cls.knob_name} must be in [{lo}, {hi}], got {knob!r}")
        return float(knob)

    def bind(self, model: LayerwiseModel, costs: CostModel) -> None:
        """Attach the model the executor runs and its cost model (called by the executor);
        a ValueError if the model lacks a capability the rule ``requires``."""
        require(model, self.requires, f"cache policy {self.name!r}")
        self.check_model(model.depth)
        self.model, self.costs = model, costs

    @staticmethod
    def fit(model, schedule, sampler: str, steps: int, **run: Any) -> tuple[dict, dict]:
        """(the :attr:`fitted` options, info with ``calls`` per run) of ``model`` for
        ``sampler`` at ``steps``, from full runs (``run``: ``n``, ``batch``, ``seed``,
        ``guidance``, ``cond``, ``sampler_kw``). Only for ``needs_fit`` policies."""
        raise NotImplementedError("this cache policy fits nothing")

    def check_model(self, depth: int) -> None:  # noqa: B027  (optional hook)
        """Raise ``ValueError`` if a model with ``depth`` blocks cannot run this policy."""

    def reset(self) -> None:
        """Forget every cached tensor: the next call starts a new sampling run."""
        self.call = -1
        self._last_t = math.inf
        self._batch = -1
        self.store: dict[str, Any] = {}

    @property
    def reuse_ratio(self) -> float:
        """Block FLOPs reused instead of computed / block FLOPs of every call, over all runs."""
        return self.reused / self.total if self.total else float("nan")

    def begin(self, t: Tensor, state: BlockState) -> Tensor | None:
        """Start a call on a batch (after embedding). Returns a bool mask of the rows served
        wholly from the cache, or None."""
        t_now = float(t.max())
        if t_now >= self._last_t or state.h.shape[0] != self._batch:
            self.reset()
            self._batch = state.h.shape[0]
        self._last_t = t_now
        self.call += 1
        self.plan_flops = 0.0
        return self.plan(state)

    @abstractmethod
    def plan(self, state: BlockState) -> Tensor | None:
        """Decide this call (``self.call``, 0 = the first of the run)."""

    def reused_hidden(self, idx: Tensor, state: BlockState) -> Tensor:
        """The final hidden state of the rows ``idx`` served from the cache."""
        raise NotImplementedError(f"{self.name} never serves whole rows from its cache")

    @abstractmethod
    def run_block(self, i: int, state: BlockState) -> float:
        """Run (or reuse, or skip) block ``i`` in place on ``state``; the FLOPs executed."""

    def finish(self, rows: Tensor, h: Tensor, h0: Tensor) -> None:  # noqa: B027
        """Rows ``rows`` (indices into the call's batch) left with hidden state ``h``;
        ``h0`` is their embedded input."""

    def _held(self) -> None:
        """Update ``peak_bytes`` with the tensors ``store`` holds now (values, or dicts of)."""
        nbytes = 0
        for v in self.store.values():
            for x in v.values() if isinstance(v, dict) else [v]:
                if isinstance(x, Tensor):
                    nbytes += x.numel() * x.element_size()
        self.peak_bytes = max(self.peak_bytes, nbytes)

    def _account(self, i: int, rows: int, executed: float) -> float:
        self.total += self.costs.blocks[i] * rows
        self.reused += self.costs.blocks[i] * rows - executed
        return executed


def check_composition(
    cache: type[CachePolicy], policy: str, exits: bool, paired: bool = False, per_row: str = ""
) -> None:
    """Raise ``ValueError`` unless cache class ``cache`` composes with exit policy ``policy``
    (``exits``: it has a knob, i.e. it can exit) and, if ``paired``, CFG rows exiting together.
    ``per_row`` names the caches that do compose, for the message. The executor and a cell check
    the same rule here."""
    if exits and not cache.per_row:
        raise ValueError(
            f"cache policy {cache.name!r} reuses blocks that an exit leaves uncomputed, so it "
            f"does not compose with exit policy {policy!r}; use policy 'full' with it, or a "
            f"per-row cache{f' ({per_row})' if per_row else ''}"
        )
    if cache.per_row and paired:
        raise ValueError(
            f"cache policy {cache.name!r} decides per row; paired (CFG) exits (cfg_exit_together) "
            "need the cond/uncond halves aligned, which its compaction breaks"
        )
