"""The layer-wise model contract: everything the block loop, the cost model, exit and cache
policies, calibration and the training recipes may ask of a denoiser's backbone.

A model that provides :class:`LayerwiseModel` can be measured with every exit policy, the
FLOP meter and the step-level caches whose capabilities it has; nothing else of its class is
read. The suite's U-ViT (:class:`models.UViT`) and the diffusers DiT and PixArt adapters
(:class:`models.dit.DiTAdapter`, :class:`models.pixart.PixArtAdapter`) are the implementations
in the package.

**State.** ``embed`` returns a state object with the hidden tokens ``h`` (B, N, D) and a
``select(idx)`` that returns the rows ``idx`` of every batch-first tensor it holds (hidden
tokens, time / class embeddings, skip stacks...), so the executor can compact the rows still
running. ``run_block`` updates the state in place and returns it.

**Core** (required):

- ``depth``: the number of blocks; ``input_shape``: (C, H, W) of ``x``; ``num_classes``: 0
  for a model without class labels, else K (the null class of guidance is label K);
- ``embed(x, t, cond) -> state``, x (B, C, H, W), t (B,) in [0, T), cond the condition (B,)
  labels, (B, L, D_ctx) text context, or None;
- ``run_block(i, state) -> state`` for i in [0, depth), in order;
- ``readout(state) -> eps`` (B, C, H, W) after any block: the state, not only ``h``, so a
  modulated final layer (DiT's adaLN) can read the time and class embedding;
- ``null_cond()`` (guidance's unconditional condition, broadcastable; None if unconditional)
  and ``example_cond(batch)`` (``batch`` of them, for tracing and cost measurement);
- ``parameters()`` (an ``nn.Module``'s).

**Capabilities** (optional; a policy that needs one names it, :func:`require`):

- ``block_parts``: ``block_parts(i, state, attn, mlp, mix) -> (attn, mlp)`` runs block ``i``
  reusing given residual branches (FORA, Learning-to-Cache, TaylorSeer, DeepCache's parts);
- ``cache_signal``: ``cache_signal(state) -> Tensor`` (B, ...), the timestep-modulated input of
  block 0 (an adaLN model's ``norm(h) * (1 + scale) + shift``): TeaCache's signal, read by
  ``teacache-batch`` with ``signal = "modulated"``;
- ``long_skips``: the model has U-Net-like long skips from in-blocks to out-blocks and says
  so with ``long_skips = True`` (DeepCache reuses the deep path between them);
- ``uem`` / ``lte``: DeeDiff's UEM heads / BERxiT's learning-to-exit head, carried as the
  modules of :mod:`models.heads` (``model.uem`` / ``model.lte``), which any model with
  ``exit_inputs(state) -> (patch tokens, time embedding)`` can be given
  (:func:`models.heads.attach_exit_heads`); read through :func:`models.heads.uncertainty`
  and :func:`models.heads.lte_score`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from models.heads import exit_heads_of

__all__ = [
    "CAPABILITIES",
    "BlockState",
    "LayerwiseModel",
    "capabilities",
    "forward_all",
    "require",
]


@runtime_checkable
class BlockState(Protocol):
    """The state between blocks: hidden tokens ``h`` (B, N, D) and ``select`` (module
    docstring, **State**)."""

    h: Tensor

    def select(self, idx: Tensor) -> Any:
        """The state of the rows ``idx`` only: every batch-first tensor it holds, indexed."""
        ...


@runtime_checkable
class LayerwiseModel(Protocol):
    """What every layer-wise backbone provides (module docstring, **Core**); the optional
    capabilities are checked with :func:`capabilities` and :func:`require`."""

    @property
    def depth(self) -> int:
        """The number of blocks."""
        ...

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the model's input ``x``."""
        ...

    @property
    def num_classes(self) -> int:
        """K for a class-conditional model (label K is guidance's null class), else 0."""
        ...

    def embed(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Any:
        """x (B, C, H, W), t (B,) in [0, T), cond (labels (B,), text context (B, L, D_ctx) or
        None) -> the state before block 0."""
        ...

    def run_block(self, i: int, state: Any) -> Any:
        """Run block ``i`` (in [0, depth), in order) in place on ``state`` and return it."""
        ...

    def readout(self, state: Any) -> Tensor:
        """eps (B, C, H, W) read out of ``state`` after any block."""
        ...

    def null_cond(self) -> Tensor | None:
        """Guidance's unconditional condition (broadcastable against a batch of conditions), or
        None for an unconditional model."""
        ...

    def example_cond(self, batch: int) -> Tensor | None:
        """``batch`` conditions for tracing and cost measurement (None if unconditional)."""
        ...

    def parameters(self, recurse: bool = True) -> Any:
        """The model's parameters (an ``nn.Module``'s)."""
        ...


# capability -> (how a model shows it has it, what it is for)
CAPABILITIES: dict[str, str] = {
    "block_parts": "block_parts(i, state, attn, mlp): a block's attention / MLP branches",
    "cache_signal": "cache_signal(state): the timestep-modulated input of block 0 (TeaCache)",
    "long_skips": "long skips from in-blocks to out-blocks (long_skips = True)",
    "uem": "DeeDiff's UEM heads (models.heads.UEMHeads as model.uem; --recipe uem)",
    "lte": "BERxiT's LTE head (models.heads.LTEHead as model.lte; --recipe berxit)",
}


def capabilities(model: Any) -> frozenset[str]:
    """The optional capabilities ``model`` has (keys of :data:`CAPABILITIES`)."""
    have = set()
    if callable(getattr(model, "block_parts", None)):
        have.add("block_parts")
    if callable(getattr(model, "cache_signal", None)):
        have.add("cache_signal")
    if getattr(model, "long_skips", False) is True:
        have.add("long_skips")
    heads = exit_heads_of(model)
    if heads in ("uem", "lte"):
        have.add(heads)
    return frozenset(have)


def require(model: Any, needs: tuple[str, ...], who: str) -> None:
    """A ValueError naming each capability of ``needs`` that ``model`` lacks (``who``: the
    policy or cache that needs it)."""
    missing = [c for c in needs if c not in capabilities(model)]
    if missing:
        what = "; ".join(f"{c}: {CAPABILITIES[c]}" for c in missing)
        raise ValueError(f"{who} needs what {type(model).__name__} does not have ({what})")


def forward_all(model: LayerwiseModel, x: Tensor, t: Tensor, cond: Tensor | None = None) -> list:
    """The readout after every block (layer-wise training losses, probes): ``depth`` tensors
    (B, C, H, W), from one pass through the contract (``embed``, ``run_block``, ``readout``)."""
    state = model.embed(x, t, cond)
    return [model.readout(model.run_block(i, state)) for i in range(model.depth)]
