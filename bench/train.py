"""Train (or load from the cache) a U-ViT denoiser, keyed by a hash of its config.

``python -m bench.train`` trains the CPU default on the bundled digits. The checkpoint is keyed
by a hash of every option below, so a second call with the same options is a cache hit and only
loads. Training: AdamW, linear learning-rate warm-up, EMA
with a warm-up of its decay, eps-prediction (Ho et al. 2020), a tqdm bar with the loss.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from adaptive.recipes import LOSS_WEIGHTS, RECIPES, get_recipe
from bench.cache import OMIT_DEFAULT, ArtifactCache, config_hash, preflight
from bench.cli import add_config_options, add_save_every, make_parser
from bench.data import DATASETS, DataSource, data_source, dataset_info
from bench.devices import AUTOCAST, resolve_device
from bench.devices import autocast as amp_context
from bench.distill import Distiller
from bench.resume import DEFAULT_SAVE_EVERY, Resume, RunState
from bench.steps import BatchStream, ema_update, lr_at, noisy_batch
from bench.text import CONTEXT_LEN, check_text, context_dim, load_context
from models import MODELS, UViT, make_model
from samplers import SCHEDULES, VPSchedule, make_schedule

__all__ = [
    "BUDGETS",
    "Budget",
    "TrainConfig",
    "TrainedModel",
    "build_model",
    "load_or_train",
    "main",
    "resolve_device",
]

log = logging.getLogger(__name__)


def _opt(help: str, choices=None) -> dict[str, Any]:
    """A field's command-line description (:func:`bench.cli.add_config_options`)."""
    return {"help": help} if choices is None else {"help": help, "choices": choices}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained checkpoint (its cache key is a hash of this)."""

    dataset: str = field(default="digits", metadata=_opt("training data", DATASETS))
    model: str = field(default="tiny", metadata=_opt("size by name", MODELS))
    schedule: str = field(default="cosine", metadata=_opt("noise schedule (betas)", SCHEDULES))
    T: int = 1000
    recipe: str = field(default="full", metadata=_opt("training loss", RECIPES))
    class_cond: bool = field(default=False, metadata=_opt("class token + null class for CFG"))
    p_uncond: float = 0.1  # label dropout for classifier-free guidance
    steps: int = field(default=4000, metadata=_opt("training steps from scratch (full recipes)"))
    batch_size: int = field(default=128, metadata=_opt("images per step"))
    lr: float = field(default=2e-3, metadata=_opt("peak learning rate (warm-up, cosine)"))
    min_lr: float = 1e-4  # cosine decay to this after warm-up
    weight_decay: float = 0.03
    warmup: int = 200
    ema_decay: float = field(default=0.999, metadata=_opt("EMA decay of the weights"))
    grad_clip: float = 1.0
    seed: int = field(default=0, metadata=_opt("initialisation and batch-order seed"))
    # Exit recipes fine-tune the `full` checkpoint (same fields, recipe="full") for this many steps.
    finetune_steps: int = field(
        default=1000, metadata=_opt("steps an exit recipe fine-tunes the cached `full` checkpoint")
    )
    finetune_lr: float = 3e-4
    # DeeDiff's weights (official code: 1 and 1).
    lambda_u: float = field(default=1.0, metadata=_opt("uem recipes: weight of L_u (>= 0)"))
    lambda_ual: float = field(
        default=1.0,
        metadata=_opt("uem recipes: weight of L_UAL (>= 0; 0 = the 'L_u only' ablation)"),
    )
    # Text conditioning (bench.text): the encoder whose prompt states are the context tokens;
    # None: unconditional or class-conditional. Hashed only when set (existing keys hold).
    text: str | None = field(
        default=None,
        metadata={
            **OMIT_DEFAULT,
            **_opt(
                "text conditioning by encoder: minilm (offline, needs the [text] extra) or "
                "clip:NAME (default: none)"
            ),
        },
    )

    def __post_init__(self) -> None:
        choices = {"dataset": DATASETS, "model": MODELS, "schedule": SCHEDULES, "recipe": RECIPES}
        for name, registry in choices.items():
            value = getattr(self, name)
            if value not in registry:
                raise ValueError(f"unknown {name} {value!r}; valid choices: {', '.join(registry)}")
        for name in ("steps", "batch_size", "T", "finetune_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0 <= self.p_uncond < 1:
            raise ValueError(f"p_uncond must be in [0, 1), got {self.p_uncond}")
        for name in ("lr", "min_lr", "finetune_lr", "weight_decay", "grad_clip", *LOSS_WEIGHTS):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not self.lr > 0 or not self.finetune_lr > 0:
            raise ValueError(f"lr and finetune_lr must be > 0, got {self.lr}, {self.finetune_lr}")
        if self.text is not None:
            check_text(self.text)
            if self.class_cond:
                raise ValueError("class_cond and text are two conditionings; pick one")

    @property
    def key(self) -> str:
        return self.identity_hash(self, kind="checkpoint")

    def identity_hash(self, obj: Any, kind: str) -> str:
        """The hash of ``obj`` (this config, or one built on it such as a pruning config) with
        this recipe's ``revision``: a recipe whose meaning changed gets new keys for everything
        made from it, while unchanged recipes (revision 0) keep theirs."""
        revision = get_recipe(self.recipe).revision
        return config_hash((obj, revision) if revision else obj, kind=kind)

    @property
    def base(self) -> TrainConfig | None:
        """The `full` checkpoint an exit recipe fine-tunes from (None for `full` itself)."""
        if not get_recipe(self.recipe).finetune:
            return None
        return dataclasses.replace(self, recipe="full", **_FINETUNE_ONLY)

    def normalised(self) -> TrainConfig:
        """Fields that cannot matter are reset, so equal models hash equal."""
        recipe = get_recipe(self.recipe)
        if not recipe.finetune:
            return dataclasses.replace(self, **_FINETUNE_ONLY)
        unused = {k: _FINETUNE_ONLY[k] for k in LOSS_WEIGHTS if k not in recipe.weights}
        return dataclasses.replace(self, **unused)

    def make_schedule(self) -> VPSchedule:
        return make_schedule(self.schedule, self.T)


# Fields that only mean something when fine-tuning (reset to their defaults otherwise).
_FINETUNE_ONLY = {
    f.name: f.default
    for f in dataclasses.fields(TrainConfig)
    if f.name in ("finetune_steps", "finetune_lr", *LOSS_WEIGHTS)
}


@dataclass(frozen=True)
class Budget:
    """Training lengths of a model size where they differ from the defaults (smoke models)."""

    steps: int
    finetune_steps: int
    prune_finetune_steps: int


# The `micro` model exists for tests and smoke sweeps: seconds of training, not minutes.
# `tiny13-p4` (the MNIST benchmark) costs ~4x a `tiny` step: pre-training keeps the default
# length (~35 min on 2 cores), the fine-tunes are halved so the whole sweep trains in ~1 h.
BUDGETS: dict[str, Budget] = {
    "micro": Budget(steps=200, finetune_steps=50, prune_finetune_steps=50),
    "tiny13-p4": Budget(steps=4000, finetune_steps=500, prune_finetune_steps=500),
}


@dataclass
class TrainedModel:
    model: UViT  # the EMA weights, in eval mode
    config: TrainConfig
    meta: dict[str, Any]
    cached: bool

    @property
    def key(self) -> str:
        return self.config.key

    @property
    def schedule(self) -> VPSchedule:
        return self.config.make_schedule()


def build_model(cfg: TrainConfig) -> UViT:
    info = dataset_info(cfg.dataset)
    text = {}
    if cfg.text is not None:
        text = dict(context_dim=context_dim(cfg.text), context_len=CONTEXT_LEN)
    return make_model(
        cfg.model,
        info.img_size,
        info.channels,
        info.num_classes if cfg.class_cond else 0,
        exit_heads=get_recipe(cfg.recipe).heads,
        **text,
    )


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
            if unexpected or any(not k.startswith(("uem.", "lte.")) for k in missing):
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


def train(
    cfg: TrainConfig,
    device: torch.device | str = "cpu",
    data: DataSource | None = None,
    progress: bool = True,
    init: dict[str, Tensor] | None = None,
    model: UViT | None = None,
    autocast: torch.dtype | None = None,
    distiller: Distiller | None = None,
    scratch: bool = False,
    cache: ArtifactCache | None = None,
    snapshot: Callable[[int, float, UViT], None] | None = None,
    snapshot_every: int = 0,
    resume: Resume | None = None,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Train from scratch, or fine-tune (with ``cfg.finetune_steps`` and ``cfg.finetune_lr``)
    either ``init`` weights (exit recipes; heads absent from ``init`` start fresh) or a given
    ``model`` (e.g. a pruned one, trained in place; ``scratch=True`` trains it with the
    pre-training schedule and ``cfg.steps`` instead). ``distiller`` adds knowledge
    distillation from a teacher (:class:`bench.distill.Distiller`). ``autocast`` (bf16 / fp16)
    runs the forward under ``torch.autocast`` (fp16 with a gradient scaler). A text model
    (``cfg.text``) trains on its prompt set's train templates, the empty prompt replacing the
    prompt with probability ``cfg.p_uncond`` (contexts from ``cache``). Returns (tensors to
    cache, metadata). ``snapshot(step, train_seconds, ema)`` is called every ``snapshot_every``
    steps and after the last (``step`` steps done; its own time is not counted in
    ``train_seconds``): a training curve without a second run. ``resume`` saves the run's
    state every ``resume.every`` steps and continues from a saved state
    (:class:`bench.resume.Resume`; a state saved after the last step returns at once)."""
    device = torch.device(device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    ds = data_source(data).load(cfg.dataset, "train")
    info = dataset_info(cfg.dataset)
    model, finetune = _prepare(cfg, device, init, model, scratch)
    context = None
    if cfg.text is not None:
        context = load_context(cfg.text, cfg.dataset, cache)
        with torch.no_grad():
            model.null_context.copy_(context.null)
    if distiller is not None:
        distiller.attach(model)
    steps, lr, min_lr, warmup = _lengths(cfg, finetune)
    run = RunState(
        model=model,
        ema=copy.deepcopy(model).requires_grad_(False),
        opt=torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay),
        scaler=torch.amp.GradScaler(device.type, enabled=autocast == torch.float16),
        gen=gen,
        stream=BatchStream(ds, cfg.batch_size, gen),
    )
    start, loss_ema, seconds = resume.restore(run) if resume is not None else (0, None, 0.0)
    ab = cfg.make_schedule().alphas_cumprod.to(device=device, dtype=torch.float32)
    recipe = get_recipe(cfg.recipe)
    weights = {name: getattr(cfg, name) for name in recipe.weights}
    desc = f"{'fine-tune' if finetune else 'train'} {cfg.recipe} {cfg.key[:8]}"
    bar = tqdm(
        range(start, steps), desc=desc, disable=not progress, mininterval=1, initial=start,
        total=steps,
    )  # fmt: skip
    t0 = time.perf_counter() - seconds  # training time so far (a resumed run's included)
    model.train()
    for step in bar:
        x_t, t, cond, eps = noisy_batch(cfg, info, *next(run.stream), ab, gen, device, context)
        for g in run.opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, min_lr, warmup)
        with amp_context(device, autocast):
            if distiller is not None:
                eps = distiller.target(x_t, t.float(), cond, eps)
            loss, logs = recipe.loss(model, x_t, t.float(), cond, eps, step, **weights)
            if distiller is not None and (feat := distiller.feature_loss()) is not None:
                loss = loss + feat
                logs = {**logs, "loss": logs["loss"] + feat.item(), "feat": feat.item()}
        _update(run, loss, cfg, step)
        loss_ema = logs["loss"] if loss_ema is None else 0.98 * loss_ema + 0.02 * logs["loss"]
        if not math.isfinite(logs["loss"]):
            raise FloatingPointError(f"training diverged at step {step} (loss {logs['loss']})")
        if step % 25 == 0:
            bar.set_postfix(loss=f"{loss_ema:.4f}")
        done = step + 1
        t_pause = time.perf_counter()  # snapshots and saves are not training time
        if snapshot is not None and (
            done == steps or (snapshot_every and done % snapshot_every == 0)
        ):
            snapshot(done, t_pause - t0, run.ema)
        if resume is not None and resume.due(done, steps):
            resume.save(run, done, loss_ema, t_pause - t0)
        t0 += time.perf_counter() - t_pause
    if distiller is not None:
        distiller.detach()
    meta = _meta(cfg, model, device, autocast, steps, time.perf_counter() - t0, loss_ema)
    tensors = {f"ema.{k}": v for k, v in run.ema.state_dict().items()}
    tensors.update({f"model.{k}": v for k, v in model.state_dict().items()})
    return tensors, meta


def _update(run: RunState, loss: Tensor, cfg: TrainConfig, step: int) -> None:
    """One optimiser step (gradient scaling and clipping) and the EMA update."""
    run.opt.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.opt)
    nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    run.scaler.step(run.opt)
    run.scaler.update()
    ema_update(run.ema, run.model, step, cfg.ema_decay)


def load_or_train(
    cfg: TrainConfig,
    cache: ArtifactCache | None = None,
    device: torch.device | str = "cpu",
    data: DataSource | None = None,
    progress: bool = True,
    autocast: torch.dtype | None = None,
    save_every: int = DEFAULT_SAVE_EVERY,
) -> TrainedModel:
    """The trained checkpoint for ``cfg``: loaded from the cache, or trained and cached.

    An exit recipe first loads (or trains) its `full` base checkpoint and fine-tunes its EMA
    weights. Training saves its state every ``save_every`` steps under ``<cache>/resume/`` and
    a rerun continues from it (:mod:`bench.resume`); the state is deleted once the checkpoint
    is cached.
    """
    cache = cache or ArtifactCache()
    cfg = cfg.normalised()
    resume = Resume.under(cache, f"checkpoint-{cfg.key}", {"checkpoint": cfg.key}, save_every)

    def build() -> tuple[dict[str, Tensor], dict[str, Any]]:
        init = None
        if cfg.base is not None:
            base = load_or_train(cfg.base, cache, device, data, progress, autocast, save_every)
            init = {k: v.detach().clone() for k, v in base.model.state_dict().items()}
        return train(
            cfg, device, data, progress, init=init, autocast=autocast, cache=cache, resume=resume
        )

    tensors, meta, cached = cache.get_or_build("checkpoint", cfg.key, build)
    resume.discard()
    model = build_model(cfg)
    model.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    return TrainedModel(model.to(device).eval(), cfg, meta, cached)


# TrainConfig's fields that python -m bench.train sets (the rest keep their defaults).
CLI_FIELDS = (
    "dataset",
    "model",
    "schedule",
    "recipe",
    "class_cond",
    "text",
    "steps",
    "batch_size",
    "lr",
    "ema_decay",
    "seed",
    "finetune_steps",
    *LOSS_WEIGHTS,
)


def _parser() -> argparse.ArgumentParser:
    p = make_parser("bench.train", __doc__)
    add_config_options(p, TrainConfig, CLI_FIELDS, explicit=LOSS_WEIGHTS)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--data-root", default=None, help="folder of a torchvision dataset")
    p.add_argument("--download", action="store_true", help="download the dataset (online)")
    p.add_argument(
        "--autocast", default="none", choices=list(AUTOCAST), help="mixed precision (GPU)"
    )
    p.add_argument("--cache-dir", default=None, help="artifact cache (default: <repo>/.cache)")
    add_save_every(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` ``python -m bench.train``'s options ask for; an option that has
    no effect on it (a loss weight the recipe does not take) is a ``ValueError``."""
    weights = get_recipe(a.recipe).weights
    for name in LOSS_WEIGHTS:  # no option silently ignored
        if getattr(a, name) is not None and name not in weights:
            flag = "--" + name.replace("_", "-")
            users = ", ".join(r for r in RECIPES if name in get_recipe(r).weights)
            raise ValueError(f"{flag} has no effect with recipe {a.recipe!r} (it feeds: {users})")
    given = {n: getattr(a, n) for n in CLI_FIELDS if getattr(a, n) is not None}
    return TrainConfig(**given)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = _parser()
    a = p.parse_args(argv)
    try:
        cfg = config_from_args(a)
        device = resolve_device(a.device)
        preflight(ArtifactCache(a.cache_dir).root)  # a read-only cache: one line, before work
        trained = load_or_train(
            cfg,
            ArtifactCache(a.cache_dir),
            device,
            DataSource(a.data_root, a.download),
            not a.no_progress,
            AUTOCAST[a.autocast],
            a.save_every,
        )
    except ValueError as e:  # DatasetError and ResumeError included
        p.error(str(e))
    except FloatingPointError as e:  # a run that diverged: not bad input, but one line
        print(f"{p.prog}: error: {e}; try a lower --lr", file=sys.stderr)
        return 1
    m = trained.meta
    state = "cache hit" if trained.cached else "trained"
    print(
        f"{state}: checkpoint {trained.key} ({m['params']:,} params, {m['train_seconds']:.0f} s, "
        f"{m['seconds_per_step']:.3f} s/step, final loss {m['final_loss']:.4f})"
    )
    print(ArtifactCache(a.cache_dir).path("checkpoint", trained.key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
