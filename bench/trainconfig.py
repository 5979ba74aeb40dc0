"""What a trained U-ViT checkpoint is: its config (the cache key is a hash of it), the training
lengths of smoke model sizes, and the model a config builds.

:mod:`bench.train` re-exports every name here; the training loop is :mod:`bench.trainloop`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from adaptive.recipes import LOSS_WEIGHTS, RECIPES, get_recipe
from bench.cache import OMIT_DEFAULT, config_hash
from bench.data import DATASETS, dataset_info
from bench.text import CONTEXT_LEN, check_text, context_dim
from models import MODELS, UViT, check_geometry, make_model
from samplers import SCHEDULES, VPSchedule, make_schedule

__all__ = [
    "BUDGETS",
    "MAX_SEED",
    "Budget",
    "TrainConfig",
    "TrainedModel",
    "build_model",
    "check_seed",
]


def _opt(help: str, choices=None) -> dict[str, Any]:
    """A field's command-line description (:func:`bench.cli.add_config_options`)."""
    return {"help": help} if choices is None else {"help": help, "choices": choices}


# Every seed (sampling, training, importance scoring) lies in [0, 2**32): sampling seeds are
# multiplied by 100,003 into a 64-bit generator seed, and one rule for all keeps a seed that a
# cell accepts valid for the commands that build its models.
MAX_SEED = 2**32


def check_seed(seed: Any, name: str = "seed") -> None:
    """A ``ValueError`` unless ``seed`` is an integer in [0, :data:`MAX_SEED`)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
        raise ValueError(f"{name} must be an integer in [0, 2**32), got {seed!r}")


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
    steps: int = field(default=12000, metadata=_opt("training steps from scratch (full recipes)"))
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

    # DyDiT recipes: the FLOP ratio the routers are trained for (a training input, one model
    # per target). Hashed only when set.
    flop_target: float | None = field(
        default=None,
        metadata={
            **OMIT_DEFAULT,
            **_opt("dydit recipes: the FLOP ratio the routers are trained for, in (0, 1]"),
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
        check_seed(self.seed)
        check_geometry(self.model, dataset_info(self.dataset).img_size)
        self._check_flop_target()
        if self.text is not None:
            check_text(self.text)
            if self.class_cond:
                raise ValueError("class_cond and text are two conditionings; pick one")

    def _check_flop_target(self) -> None:
        ft, takes = self.flop_target, "flop_target" in get_recipe(self.recipe).weights
        if ft is not None and not (
            isinstance(ft, (int, float)) and math.isfinite(ft) and 0 < ft <= 1
        ):
            raise ValueError(f"flop_target must be in (0, 1], got {ft!r}")
        if takes and ft is None:
            raise ValueError(
                f"recipe {self.recipe!r} trains for a FLOP target: set flop_target in (0, 1]"
            )

    @property
    def key(self) -> str:
        """The checkpoint's artifact key (this config's hash with its recipe's revision)."""
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
        unused = {k: _FINETUNE_ONLY[k] for k in RECIPE_INPUTS if k not in recipe.weights}
        return dataclasses.replace(self, **unused)

    def make_schedule(self) -> VPSchedule:
        """The noise schedule ``schedule`` with ``T`` timesteps."""
        return make_schedule(self.schedule, self.T)


# What a recipe may take from the config besides the fine-tune length (RECIPES' ``weights``).
RECIPE_INPUTS = (*LOSS_WEIGHTS, "flop_target")

# Fields that only mean something when fine-tuning (reset to their defaults otherwise).
_FINETUNE_ONLY = {
    f.name: f.default
    for f in dataclasses.fields(TrainConfig)
    if f.name in ("finetune_steps", "finetune_lr", *RECIPE_INPUTS)
}


@dataclass(frozen=True)
class Budget:
    """Training lengths of a model size where they differ from the defaults (smoke models), and
    its pre-training optimiser settings where they do (None: :class:`TrainConfig`'s)."""

    steps: int
    finetune_steps: int
    prune_finetune_steps: int
    batch_size: int | None = None
    lr: float | None = None
    warmup: int | None = None

    def optimiser(self) -> dict[str, Any]:
        """The TrainConfig fields this budget sets besides the lengths."""
        fields = {"batch_size": self.batch_size, "lr": self.lr, "warmup": self.warmup}
        return {k: v for k, v in fields.items() if v is not None}


# The default length (12,000 steps) is where the digits `tiny` model's held-out FID stops
# improving (docs/findings/convergence.md). The `micro` model exists for tests and smoke
# sweeps: seconds of training, not minutes. `tiny13` (the DeeDiff ablation's 13-block model)
# keeps the 4,000 steps it was measured and shipped with. `tiny13-p4` (the MNIST benchmark)
# costs ~4x a `tiny` step: pre-training 4,000 steps (~35 min on 2 cores; not its converged
# length, see docs/findings/mnist.md), the fine-tunes halved so the sweep trains in ~1 h.
BUDGETS: dict[str, Budget] = {
    "micro": Budget(steps=200, finetune_steps=50, prune_finetune_steps=50),
    "tiny13-p4": Budget(steps=4000, finetune_steps=500, prune_finetune_steps=500),
    "tiny13": Budget(steps=4000, finetune_steps=1000, prune_finetune_steps=4000),
    # The 28x28 DiT the MNIST diagnosis picked (docs/findings/mnist.md): batch 32 at lr 3e-4, as
    # diagnosed; the length is the curve run's, being measured (not known to converge).
    "dit-p4": Budget(
        steps=40000,
        finetune_steps=2000,
        prune_finetune_steps=2000,
        batch_size=32,
        lr=3e-4,
        warmup=500,
    ),
}


@dataclass
class TrainedModel:
    """A trained checkpoint (its EMA weights), its config and metadata, and whether it was a
    cache hit."""

    model: UViT  # the EMA weights, in eval mode
    config: TrainConfig
    meta: dict[str, Any]
    cached: bool

    @property
    def key(self) -> str:
        """The checkpoint's artifact key."""
        return self.config.key

    @property
    def schedule(self) -> VPSchedule:
        """The noise schedule it was trained with."""
        return self.config.make_schedule()


def build_model(cfg: TrainConfig) -> UViT:
    """A fresh U-ViT for ``cfg``: its size, the dataset's image shape, class or text
    conditioning, and the recipe's exit heads and learned parts."""
    info = dataset_info(cfg.dataset)
    text = {}
    if cfg.text is not None:
        text = dict(context_dim=context_dim(cfg.text), context_len=CONTEXT_LEN)
    recipe = get_recipe(cfg.recipe)
    model = make_model(
        cfg.model,
        info.img_size,
        info.channels,
        info.num_classes if cfg.class_cond else 0,
        exit_heads=recipe.heads,
        **text,
    )
    if recipe.prepare is not None:
        recipe.prepare(model)
    return model
