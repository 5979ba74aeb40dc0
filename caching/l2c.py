"""Learning-to-Cache's router, learned for one model, sampler and call count (Ma et al., NeurIPS
2024, "Learning-to-Cache: Accelerating Diffusion Transformer via Layer Caching", Sec. 3.2).

The router is one score ``beta[c, i, p] = sigmoid(s[c, i, p])`` per denoiser call ``c``, block
``i`` and branch ``p`` (0 attention, 1 MLP). Training interpolates each branch of call ``c``
between its fresh value and the value cached at call ``c - 1``,
``beta * fresh + (1 - beta) * cached``, along trajectories of the full model (its inputs and its
cached branches: teacher forcing), and minimises

    || eps_mixed(c) - eps_full(c) ||^2 + lam * mean(beta)

so a branch keeps a high score only where reusing it moves the output. At inference
(:class:`caching.policies.LearningToCache`) a branch is reused where ``beta < threshold``; the
threshold is the knob the calibrator bisects. Only the router trains (the model is frozen).

As the authors run it (``alternate=True``, the default), calls alternate between full calls
(even ``c``: every branch computed) and cache calls (odd ``c``: the router decides), so a reused
branch always comes from the call just before, which computed it: the teacher-forced training
sees exactly what inference does, and at most every other call saves (the paper's "93.68% of
the layers in the cache steps, 46.84% for all steps" on U-ViT-H/2). ``alternate=False`` lets
the router reuse on any call, from the last call that computed the branch, which training does
not see (kept to reproduce the suite's first version). Differences from the paper: scores are
per (call, block, branch) for U-ViT's blocks, the loss is on the noise prediction, and
trajectories come from the suite's sampler of the cell.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

import samplers
from blockloop.model import LayerwiseModel
from samplers import ClassifierFreeGuidance, VPSchedule

__all__ = ["RouterTraining", "train_router"]

log = logging.getLogger(__name__)


class _Recorder:
    """A denoiser that runs the plain model and keeps every call's inputs."""

    def __init__(self, model: LayerwiseModel) -> None:
        self.model = model
        self.calls: list[tuple[Tensor, Tensor, Tensor | None]] = []

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        self.calls.append((x.float(), t.float(), cond))
        return self.model(x, t, cond)


def _rows(call: tuple[Tensor, Tensor, Tensor | None], rows: Tensor) -> tuple:
    x, t, cond = call
    return x[rows], t[rows], None if cond is None else cond[rows]


class _Mix:
    """``beta[p] * fresh + (1 - beta[p]) * cached[p]`` for branch p of one block."""

    def __init__(self, beta: Tensor, cached: list[Tensor]) -> None:
        self.beta, self.cached = beta, cached

    def __call__(self, part: int, fresh: Tensor) -> Tensor:
        b = self.beta[part]
        return b * fresh + (1 - b) * self.cached[part]


def _branches(
    model: LayerwiseModel, x: Tensor, t: Tensor, cond: Tensor | None
) -> list[list[Tensor]]:
    """Every block's (attention, MLP) branch of the plain forward pass."""
    state = model.embed(x, t, cond)
    out = []
    for i in range(model.depth):
        out.append(list(model.block_parts(i, state)))
    return out


@dataclass(frozen=True)
class RouterTraining:
    """The router's training hyper-parameters: ``n`` recorded trajectories, ``iters`` Adam
    steps of learning rate ``lr`` on ``batch`` rows of one call each, the sparsity weight
    ``lam`` and the ``seed`` of the trajectories' noise (``seed + 1`` draws the batches)."""

    n: int = 256
    iters: int = 400
    batch: int = 64
    lam: float = 1e-3
    lr: float = 0.05
    seed: int = 0
    alternate: bool = True

    def __post_init__(self) -> None:
        if self.iters < 1 or self.n < 2 or self.batch < 1 or not self.lam >= 0 or not self.lr > 0:
            raise ValueError(
                f"l2c training needs iters >= 1, n >= 2, batch >= 1, lam >= 0, lr > 0; got "
                f"{self.iters}, {self.n}, {self.batch}, {self.lam}, {self.lr}"
            )


def train_router(
    model: LayerwiseModel,
    schedule: VPSchedule,
    sampler: str,
    steps: int,
    *,
    sampler_kw: dict[str, Any] | None = None,
    guidance: float | None = None,
    progress: bool = False,
    cond: Tensor | None = None,
    **training: Any,
) -> tuple[Tensor, dict[str, Any]]:
    """The router scores ``beta`` (calls, depth, 2) in [0, 1] for ``model`` sampled with
    ``sampler`` / ``steps`` (and ``guidance``: rows are then cond and uncond halves), and a
    summary of the training (final losses). ``cond``: the ``n`` trajectories' conditions
    (default: the classes in turn for a class-conditional model under guidance).
    ``training``: the fields of :class:`RouterTraining` (``n``, ``iters``, ``batch``, ``lam``,
    ``lr``, ``seed``); an unknown one is a TypeError, a bad value a ValueError."""
    opts = RouterTraining(**training)
    model = model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    calls = _record_calls(
        model,
        schedule,
        sampler,
        steps,
        sampler_kw=sampler_kw,
        guidance=guidance,
        cond=cond,
        opts=opts,
    )
    logits, mse, reg = _fit_logits(model, calls, opts, progress)
    router = torch.sigmoid(logits.detach()).cpu()
    router[0] = 1.0  # the first call has nothing cached: it always computes
    if opts.alternate:
        router[0::2] = 1.0  # full calls: the cache calls between reuse what they computed
    log.info("l2c router: %d calls, final mse %.3g, mean beta %.3f", len(calls), mse, reg)
    return router, {"calls": len(calls), "mse": mse, "mean_beta": float(router[1:].mean())}


def _record_calls(
    model: LayerwiseModel,
    schedule: VPSchedule,
    sampler: str,
    steps: int,
    *,
    sampler_kw: dict[str, Any] | None,
    guidance: float | None,
    cond: Tensor | None,
    opts: RouterTraining,
) -> list[tuple[Tensor, Tensor, Tensor | None]]:
    """Sample ``opts.n`` trajectories of the frozen ``model`` (noise seeded by ``opts.seed``,
    under classifier-free ``guidance`` if given) and return every denoiser call's inputs
    ``(x, t, cond)``, in call order: the teacher-forcing data of the router."""
    dev = next(model.parameters()).device
    rec = _Recorder(model)
    denoiser = rec
    if guidance is not None:
        if cond is None:
            if not model.num_classes:
                raise ValueError("a text-conditional model learns its router on given prompts")
            cond = torch.arange(opts.n, device=dev) % model.num_classes
        denoiser = ClassifierFreeGuidance(rec, guidance, model.null_cond())
    gen = torch.Generator(device=dev).manual_seed(opts.seed)
    with torch.no_grad():
        samplers.sample(
            sampler,
            denoiser,
            schedule,
            (opts.n, *model.input_shape),
            steps,
            generator=gen,
            cond=cond,
            **(sampler_kw or {}),
        )
    return rec.calls


def _fit_logits(
    model: LayerwiseModel,
    calls: list[tuple[Tensor, Tensor, Tensor | None]],
    opts: RouterTraining,
    progress: bool,
) -> tuple[Tensor, float, float]:
    """Adam on the router's logits (calls, depth, 2), one random call ``c >= 1`` (odd with
    ``opts.alternate``: the cache calls) and ``opts.batch`` random rows per step (drawn from a
    CPU generator seeded ``opts.seed + 1``); returns the logits and the last step's MSE and
    mean beta (NaN when no step ran: fewer than two calls)."""
    dev = next(model.parameters()).device
    # Start near "compute everything" (beta ~ 0.95): the sparsity term lowers what is cheap.
    logits = torch.full((len(calls), model.depth, 2), 3.0, device=dev, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=opts.lr)
    rng = torch.Generator().manual_seed(opts.seed + 1)
    rows_total = calls[0][0].shape[0]
    mse = reg = float("nan")
    for _ in tqdm(range(opts.iters), desc="l2c router", disable=not progress):
        if len(calls) < 2:
            break
        c = int(torch.randint(1, len(calls), (1,), generator=rng))
        if opts.alternate and c % 2 == 0:
            # The cache call after full call c - 2. (With an even call count the last cache
            # call is drawn half as often as the others; kept, as every router is keyed by it.)
            c -= 1
        rows = torch.randperm(rows_total, generator=rng)[: opts.batch].to(dev)
        beta = torch.sigmoid(logits[c])  # (depth, 2)
        loss_mse = _mixed_mse(model, _rows(calls[c - 1], rows), _rows(calls[c], rows), beta)
        loss_reg = beta.mean()
        loss = loss_mse + opts.lam * loss_reg
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        mse, reg = loss_mse.item(), loss_reg.item()
    return logits, mse, reg


def _mixed_mse(model: LayerwiseModel, prev: tuple, now: tuple, beta: Tensor) -> Tensor:
    """Mean squared difference between the model's output at inputs ``now`` with every
    block's branch ``p`` mixed as ``beta[i, p] * fresh + (1 - beta[i, p]) * cached`` (the
    branches cached from inputs ``prev``) and its plain output at ``now``."""
    with torch.no_grad():
        cached = _branches(model, *prev)
        target = model(*now)
    state = model.embed(*now)
    for i in range(model.depth):
        model.block_parts(i, state, mix=_Mix(beta[i], cached[i]))
    return (model.readout(state) - target).pow(2).mean()
