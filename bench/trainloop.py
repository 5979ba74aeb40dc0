"""One training or fine-tuning run of a U-ViT denoiser: the loop behind :mod:`bench.train`.

AdamW, linear learning-rate warm-up then cosine decay, EMA with a warm-up of its decay,
eps-prediction (Ho et al. 2020), a tqdm bar with the loss. The run's fixed parts are set up once
(:class:`_Loop`), then each step draws a noisy batch, takes an optimiser step and may call the
snapshot hook and save the resumable state (:mod:`bench.resume`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from adaptive.recipes import Recipe, get_recipe
from bench.cache import ArtifactCache
from bench.data import DatasetInfo, DataSource, data_source, dataset_info
from bench.devices import autocast as amp_context
from bench.distill import Distiller
from bench.resume import Resume, RunState
from bench.steps import BatchStream, ema_update, lr_at, noisy_batch
from bench.text import TextContext, load_context
from bench.trainconfig import TrainConfig, build_model
from models import UViT

__all__ = ["TrainOptions", "train"]


@dataclass(frozen=True)
class TrainOptions:
    """How a :func:`train` run runs, beside what it trains (none of this is in a key).

    ``autocast`` (bf16 / fp16) runs the forward under ``torch.autocast`` (fp16 with a gradient
    scaler). ``cache`` holds a text model's contexts. ``snapshot(step, train_seconds, ema)`` is
    called every ``snapshot_every`` steps and after the last (``step`` steps done; its own time
    is not counted in ``train_seconds``): a training curve without a second run. ``resume``
    saves the run's state every ``resume.every`` steps and continues from a saved state
    (:class:`bench.resume.Resume`; a state saved after the last step returns at once)."""

    device: torch.device | str = "cpu"
    data: DataSource | None = None
    progress: bool = True
    autocast: torch.dtype | None = None
    cache: ArtifactCache | None = None
    snapshot: Callable[[int, float, UViT], None] | None = None
    snapshot_every: int = 0
    resume: Resume | None = None


@dataclass
class _Loop:
    """A run's fixed parts, set up before its first step."""

    cfg: TrainConfig
    opts: TrainOptions
    device: torch.device
    info: DatasetInfo
    run: RunState
    recipe: Recipe
    weights: dict[str, float]  # the recipe's loss weights, from cfg
    ab: Tensor  # the schedule's alphas_cumprod, on the device
    context: TextContext | None
    distiller: Distiller | None
    finetune: bool
    steps: int
    lr: float
    min_lr: float
    warmup: int


def _prepare(
    cfg: TrainConfig,
    device: torch.device,
    init: dict[str, Tensor] | None,
    model: UViT | None,
    scratch: bool = False,
) -> tuple[UViT, bool]:
    """The model to train on ``device`` (fresh, from ``init`` weights, or the given one) and
    whether this is a fine-tune (``scratch``: a given model trained with the pre-training
    schedule)."""
    finetune = (init is not None or model is not None) and not scratch
    if model is None:
        model = build_model(cfg)
        if init is not None:
            missing, unexpected = model.load_state_dict(init, strict=False)
            if unexpected or any(not k.startswith(("uem.", "lte.", "routers.")) for k in missing):
                raise ValueError(f"init weights do not fit: missing {missing}, extra {unexpected}")
    return model.to(device), finetune


def _lengths(cfg: TrainConfig, finetune: bool) -> tuple[int, float, float, int]:
    """(steps, peak lr, final lr, warm-up steps) of a training run or a fine-tune."""
    if not finetune:
        return cfg.steps, cfg.lr, cfg.min_lr, cfg.warmup
    lr = cfg.finetune_lr
    return cfg.finetune_steps, lr, min(cfg.min_lr, lr), min(cfg.warmup, 100)


def _meta(cfg, model, device, autocast, steps: int, seconds: float, loss) -> dict[str, Any]:
    """What a checkpoint records about how it was made."""
    return {
        "config": dataclasses.asdict(cfg),
        "train_seconds": seconds,
        "seconds_per_step": seconds / steps,
        "steps": steps,
        "base": cfg.base.key if cfg.base is not None else None,
        "final_loss": loss,
        "params": sum(p.numel() for p in model.parameters()),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "autocast": str(autocast) if autocast is not None else None,
    }


def _setup(
    cfg: TrainConfig,
    opts: TrainOptions,
    init: dict[str, Tensor] | None,
    model: UViT | None,
    distiller: Distiller | None,
    scratch: bool,
) -> tuple[_Loop, int, float | None, float]:
    """The run's fixed parts and where it starts: (loop, steps done, loss EMA, train seconds),
    restored from ``opts.resume`` when it holds a state. The order of the calls fixes the random
    draws (seeds, then the model's initialisation)."""
    device = torch.device(opts.device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    ds = data_source(opts.data).load(cfg.dataset, "train")
    info = dataset_info(cfg.dataset)
    model, finetune = _prepare(cfg, device, init, model, scratch)
    context = None
    if cfg.text is not None:
        context = load_context(cfg.text, cfg.dataset, opts.cache)
        with torch.no_grad():
            model.null_context.copy_(context.null)
    if distiller is not None:
        distiller.attach(model)
    steps, lr, min_lr, warmup = _lengths(cfg, finetune)
    run = RunState(
        model=model,
        ema=copy.deepcopy(model).requires_grad_(False),
        opt=torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay),
        scaler=torch.amp.GradScaler(device.type, enabled=opts.autocast == torch.float16),
        gen=gen,
        stream=BatchStream(ds, cfg.batch_size, gen),
    )
    resume = opts.resume
    start, loss_ema, seconds = resume.restore(run) if resume is not None else (0, None, 0.0)
    ab = cfg.make_schedule().alphas_cumprod.to(device=device, dtype=torch.float32)
    recipe = get_recipe(cfg.recipe)
    weights = {name: getattr(cfg, name) for name in recipe.weights}
    loop = _Loop(
        cfg=cfg, opts=opts, device=device, info=info, run=run, recipe=recipe, weights=weights,
        ab=ab, context=context, distiller=distiller, finetune=finetune, steps=steps, lr=lr,
        min_lr=min_lr, warmup=warmup,
    )  # fmt: skip
    return loop, start, loss_ema, seconds


def train(
    cfg: TrainConfig,
    opts: TrainOptions | None = None,
    *,
    init: dict[str, Tensor] | None = None,
    model: UViT | None = None,
    distiller: Distiller | None = None,
    scratch: bool = False,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Train from scratch, or fine-tune (with ``cfg.finetune_steps`` and ``cfg.finetune_lr``)
    either ``init`` weights (exit recipes; heads absent from ``init`` start fresh) or a given
    ``model`` (e.g. a pruned one, trained in place; ``scratch=True`` trains it with the
    pre-training schedule and ``cfg.steps`` instead). ``distiller`` adds knowledge
    distillation from a teacher (:class:`bench.distill.Distiller`). A text model
    (``cfg.text``) trains on its prompt set's train templates, the empty prompt replacing the
    prompt with probability ``cfg.p_uncond`` (contexts from ``opts.cache``). ``opts``: device,
    data, progress bar, mixed precision, snapshots and the resumable state
    (:class:`TrainOptions`; default: its defaults). Returns (tensors to cache, metadata)."""
    opts = opts if opts is not None else TrainOptions()
    loop, start, loss_ema, seconds = _setup(cfg, opts, init, model, distiller, scratch)
    steps = loop.steps
    desc = f"{'fine-tune' if loop.finetune else 'train'} {cfg.recipe} {cfg.key[:8]}"
    bar = tqdm(
        range(start, steps), desc=desc, disable=not opts.progress, mininterval=1, initial=start,
        total=steps,
    )  # fmt: skip
    t0 = time.perf_counter() - seconds  # training time so far (a resumed run's included)
    loop.run.model.train()
    for step in bar:
        logs = _step(loop, step)
        loss_ema = logs["loss"] if loss_ema is None else 0.98 * loss_ema + 0.02 * logs["loss"]
        if not math.isfinite(logs["loss"]):
            raise FloatingPointError(f"training diverged at step {step} (loss {logs['loss']})")
        if step % 25 == 0:
            bar.set_postfix(loss=f"{loss_ema:.4f}")
        t0 = _after_step(loop, step + 1, loss_ema, t0)
    if distiller is not None:
        distiller.detach()
    return _result(loop, time.perf_counter() - t0, loss_ema)


def _step(loop: _Loop, step: int) -> dict[str, float]:
    """One training step at ``step`` (steps done before it); returns the recipe's logs."""
    cfg, run, distiller = loop.cfg, loop.run, loop.distiller
    x_t, t, cond, eps = noisy_batch(
        cfg, loop.info, *next(run.stream), loop.ab, run.gen, loop.device, loop.context
    )
    for g in run.opt.param_groups:
        g["lr"] = lr_at(step, loop.steps, loop.lr, loop.min_lr, loop.warmup)
    with amp_context(loop.device, loop.opts.autocast):
        if distiller is not None:
            eps = distiller.target(x_t, t.float(), cond, eps)
        loss, logs = loop.recipe.loss(run.model, x_t, t.float(), cond, eps, step, **loop.weights)
        if distiller is not None and (feat := distiller.feature_loss()) is not None:
            loss = loss + feat
            logs = {**logs, "loss": logs["loss"] + feat.item(), "feat": feat.item()}
    _update(run, loss, cfg, step)
    return logs


def _update(run: RunState, loss: Tensor, cfg: TrainConfig, step: int) -> None:
    """One optimiser step (gradient scaling and clipping) and the EMA update."""
    run.opt.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.opt)
    nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    run.scaler.step(run.opt)
    run.scaler.update()
    ema_update(run.ema, run.model, step, cfg.ema_decay)


def _after_step(loop: _Loop, done: int, loss_ema: float, t0: float) -> float:
    """The snapshot and the resumable state due after ``done`` steps; returns ``t0`` moved on
    by their own time (snapshots and saves are not training time)."""
    opts = loop.opts
    t_pause = time.perf_counter()
    every = opts.snapshot_every
    if opts.snapshot is not None and (done == loop.steps or (every and done % every == 0)):
        opts.snapshot(done, t_pause - t0, loop.run.ema)
    if opts.resume is not None and opts.resume.due(done, loop.steps):
        opts.resume.save(loop.run, done, loss_ema, t_pause - t0)
    return t0 + (time.perf_counter() - t_pause)


def _result(
    loop: _Loop, seconds: float, loss_ema: float | None
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors to cache: the EMA and the raw weights, metadata) of a finished run."""
    run = loop.run
    meta = _meta(
        loop.cfg, run.model, loop.device, loop.opts.autocast, loop.steps, seconds, loss_ema
    )
    tensors = {f"ema.{k}": v for k, v in run.ema.state_dict().items()}
    tensors.update({f"model.{k}": v for k, v in run.model.state_dict().items()})
    return tensors, meta
