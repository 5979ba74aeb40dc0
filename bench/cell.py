"""A pipeline cell: one frozen configuration of the suite (data, model, training, pruning, exit
policy, sampler, guidance, evaluation) and everything that validates it.

A :class:`Cell` checks every field when it is made (types from its annotations, registry
choices from :data:`CELL_CHOICES`, ranges and the limits that depend on other fields), so a
bad sweep fails when it is read, never inside a run. :func:`cell_train_config` and
:func:`cell_prune_config` turn a cell into the configs of the artifacts it needs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from adaptive.calibrate import check_target
from adaptive.policies import POLICIES, ExitSpec
from adaptive.recipes import RECIPES
from bench.cache import config_hash
from bench.cellcheck import (
    NoneOr,
    check_cache,
    check_conditioning,
    check_policy,
    check_pretrained,
    check_training,
    check_types,
    model_size,
)
from bench.data import DATASETS, SPLITS
from bench.devices import AUTOCAST
from bench.metrics import EXTRACTORS
from bench.prune import PRUNE_REVISION, PruneConfig
from bench.text import PROMPT_SPLITS
from bench.train import BUDGETS, TrainConfig
from bench.trainconfig import check_seed
from caching import CACHES, CacheSpec
from models import MODELS
from models.pretrained import describe, is_folder
from pruning import DEFAULT_IMPORTANCE, IMPORTANCES, check_prune
from samplers import SAMPLERS, check_options

MAX_SAMPLES = 100_000  # per cell; the samples are held in memory for FID

__all__ = [
    "CELL_CHOICES",
    "Cell",
    "cell_model_key",
    "cell_prune_config",
    "cell_train_config",
    "solver_label",
]


# The registry behind each named axis (validation and --list share it; live: plugins add names).
CELL_CHOICES = {
    "dataset": DATASETS,
    "model": MODELS,
    "recipe": RECIPES,
    "policy": POLICIES,
    "sampler": SAMPLERS,
    "prune_importance": IMPORTANCES,
    "extractor": EXTRACTORS,
    "reference": SPLITS,
    "autocast": AUTOCAST,
    "cache": NoneOr(CACHES),
    "prompts": PROMPT_SPLITS,
}


@dataclass(frozen=True)
class Cell:
    """One pipeline configuration; its key (a hash of its non-default fields) names its record."""

    # The data and the model (bench.data, models.MODELS, adaptive.recipes).
    dataset: str = "digits"  # the images the model trains on and FID is measured against
    model: str = "tiny"  # a size (`micro` for smoke runs), or a from_pretrained folder (a path)
    recipe: str = "full"  # how the model is trained: plain, or with an exit method's heads/loss
    # Structured pruning (pruning, bench.prune): heads and MLP channels, then a fine-tune.
    prune_ratio: float = 0.0  # share of heads / MLP channels removed, in [0, 1); 0: unpruned
    prune_importance: str = DEFAULT_IMPORTANCE  # the criterion that ranks what to remove
    # The pruned model's fine-tune (bench.prune.PruneConfig; None: its default recipe): budget,
    # learning rate, distillation weights (eps, block features), prune–fine-tune rounds, and
    # the train-small control (the pruned shape trained from scratch with the same compute).
    prune_finetune_steps: int | None = None
    prune_lr: float | None = None
    prune_distill: float | None = None
    prune_distill_features: float | None = None
    prune_rounds: int | None = None
    prune_scratch: bool = False
    prune_round_to: int | None = None  # MLP channels kept: a multiple of this (GEMM-friendly)
    prune_teacher: str | None = None  # distillation teacher: "base" or a checkpoint key
    # Early exits (adaptive.policies): the policy, and its knob set or calibrated.
    policy: str = "full"  # the exit rule after each block (`full`: never exit)
    knob: float | None = None  # the policy's knob (None: its default); not with a target
    target_flop_ratio: float | None = None  # calibrate the knob to this FLOP ratio per call
    # With a calibrated cache: the exits calibrated alone to this FLOP ratio first, then the
    # cache to target_flop_ratio in total ("exits at 0.65, a cache to 0.5 in total").
    exit_flop_ratio: float | None = None
    patience: int | None = None  # pabee / uem: exit on the n-th agreeing / confident block
    policy_args: dict[str, Any] | None = None  # other policy keywords: {shallow = 3}
    # Sampling (samplers): the solver and its budget.
    sampler: str = "ddim"  # the solver (samplers.SAMPLERS)
    steps: int = 20  # denoiser evaluations (NFE) the sampler may spend, <= the schedule's T
    # The sampler's time grid and order (samplers.grid, samplers.ORDERS); None = its default.
    spacing: str | None = None
    end: str | None = None
    order: int | None = None
    lower_order_final: bool | None = None  # multistep solvers' final-step rule
    taylor_3m: bool | None = None  # DPM-Solver 3M with the Taylor-consistent D2 (samplers.dpm)
    # Classifier-free guidance scale; None = unconditional model. A number selects the
    # class-conditional model (labels cycle through the classes) and guides with that scale.
    guidance: float | None = None
    # Text conditioning (bench.text): the encoder of a text-conditioned model (None: none),
    # and which templates of the data set's prompt set generation uses ("heldout": wordings
    # never seen in training). Prompts cycle through the classes, then the templates; with
    # `guidance` they are guided against the empty prompt.
    text: str | None = None
    prompts: str = "heldout"
    cfg_exit_together: bool = False  # a sample's cond/uncond rows exit at the same block
    # Step-level caching (caching.CACHES): the policy, its knob (None: its default, or
    # calibrated to target_flop_ratio) and DeepCache's branch depth (None: its default).
    cache: str = "none"
    cache_knob: float | None = None
    cache_branch: int | None = None
    cache_order: int | None = None  # TaylorSeer's expansion order (None: its default, 1)
    cache_args: dict[str, Any] | None = None  # any other keyword of the cache's constructor
    # Evaluation, and where the cell runs.
    samples: int = 1000  # images generated and scored
    seed: int = 0  # sampling seed (same seed: same initial noise in every cell)
    device: str = "cpu"  # cpu, cuda or cuda:N (bench.grid --device overrides it)
    autocast: str = "none"  # "bf16" / "fp16": sample under torch.autocast
    extractor: str = "cnn"  # FID features: the offline CNN, or clean-fid's InceptionV3
    reference: str = "train"  # FID against the training images, or the held-out ones
    # Training of the model the cell runs (defaults: bench.train's): the fine-tune budget of
    # exit recipes and the `full-ft` control, and DeeDiff's loss weights (uem recipes).
    finetune_steps: int | None = None
    lambda_u: float = 1.0
    lambda_ual: float = 1.0

    def __hash__(self) -> int:  # the option tables are dicts: hash the identity instead
        return hash(self.key)

    def __post_init__(self) -> None:
        for name in ("policy_args", "cache_args"):  # a copy (the cell is frozen); {} is unset
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, dict(value) or None)
        check_types(self)
        for name, registry in CELL_CHOICES.items():
            if name == "model":
                model_size(self.model)  # a registered size or a from_pretrained folder
            elif getattr(self, name) not in registry:
                raise ValueError(
                    f"unknown {name} {getattr(self, name)!r}; valid choices: {', '.join(registry)}"
                )
        check_prune(self.prune_ratio, self.prune_importance)
        if self.prune_ratio == 0 and any(map(self._sets, PRUNE_FIELDS)):
            raise ValueError(f"{', '.join(PRUNE_FIELDS)} need prune_ratio > 0")
        if self.target_flop_ratio is not None:
            check_target(self.target_flop_ratio)
        check_cache(self)
        if self.samples < 2 or self.steps < 1:
            raise ValueError(
                f"samples must be >= 2 and steps >= 1, got {self.samples}, {self.steps}"
            )
        check_seed(self.seed)
        if self.samples > MAX_SAMPLES:
            raise ValueError(
                f"samples must be <= {MAX_SAMPLES:,} (FID papers use 50,000), got {self.samples:,}"
            )
        check_policy(self)
        check_training(self)
        if is_folder(self.model):
            schedule = check_pretrained(self)
            T = schedule.T
        else:
            tcfg = cell_train_config(self)  # validates the training fields (steps, loss weights)
            if self.prune_ratio > 0:
                cell_prune_config(self, tcfg)  # validates the fine-tune fields
            schedule, T = tcfg.schedule, tcfg.T  # by name: the checks cache named schedules
        if self.steps > T:
            raise ValueError(f"steps must be <= the schedule's T = {T}, got {self.steps}")
        check_options(self.sampler, self.steps, T=T, schedule=schedule, **self.sampler_options)
        check_conditioning(self)

    def _sets(self, name: str) -> bool:
        """Whether an optional field is set (not None; a flag: True)."""
        value = getattr(self, name)
        return value is not None and value is not False

    @property
    def calibrates_cache(self) -> bool:
        """``target_flop_ratio`` calibrates the cache's knob (a cache without ``cache_knob``),
        not the exit policy's."""
        return (
            self.target_flop_ratio is not None and self.cache != "none" and self.cache_knob is None
        )

    @property
    def calibrates_exit(self) -> bool:
        """The exit knob is calibrated: to ``target_flop_ratio`` (no calibrated cache, no knob set
        on a model trained for the target), or to ``exit_flop_ratio`` before the cache is."""
        fixed = self.knob is not None and "flop_target" in RECIPES[self.recipe].weights
        own = self.target_flop_ratio is not None and not (self.calibrates_cache or fixed)
        return own or self.exit_flop_ratio is not None

    @property
    def exit_spec(self) -> ExitSpec:
        """The exit policy, its knob (None where calibrated or default) and options."""
        return ExitSpec(self.policy, None if self.calibrates_exit else self.knob, self.options)

    @property
    def cache_spec(self) -> CacheSpec | None:
        """The step-level cache (None without one), its knob (None where calibrated or
        default) and the options the cell sets (the pipeline adds the l2c router and the
        guidance branches)."""
        if self.cache == "none":
            return None
        return CacheSpec(self.cache, self.cache_knob, self.cache_options)

    @property
    def cache_options(self) -> dict[str, Any]:
        """Keyword options of the cache policy (those the cell sets; the l2c router is the
        pipeline's)."""
        options = {"branch": self.cache_branch, "order": self.cache_order}
        return {**{k: v for k, v in options.items() if v is not None}, **(self.cache_args or {})}

    @property
    def options(self) -> dict[str, Any]:
        """Keyword options of the exit policy (those the cell sets)."""
        own = {} if self.patience is None else {"patience": self.patience}
        return {**own, **(self.policy_args or {})}

    @property
    def sampler_options(self) -> dict[str, Any]:
        """The sampler's grid / order options the cell sets (unset ones keep its defaults)."""
        names = ("spacing", "end", "order", "lower_order_final", "taylor_3m")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def sampler_label(self) -> str:
        """``sampler[order]-steps[ spacing][ end]``, e.g. ``dpm-solver++3-10 logSNR``."""
        return solver_label(self.sampler, self.steps, **self.sampler_options)

    @property
    def key(self) -> str:
        """A hash of the fields that differ from their defaults, so adding a field (with a
        default) to :class:`Cell` keeps every existing record's key; a recipe or policy whose
        meaning changed (its ``revision``) changes the keys of the cells that use it."""
        changed = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != f.default
        }
        revisions = (RECIPES[self.recipe].revision, POLICIES[self.policy].revision)
        if any(revisions):
            changed["revisions"] = revisions
        if self.prune_ratio > 0 and PRUNE_REVISION:
            changed["prune_revision"] = PRUNE_REVISION
        return config_hash(changed, kind="cell")

    def model_label(self) -> str:
        """The model the cell runs: size (if not the default), recipe, training, pruning."""
        train = f" ft{self.finetune_steps}" if self.finetune_steps is not None else ""
        for name, short in (("lambda_u", "lu"), ("lambda_ual", "lual")):
            if getattr(self, name) != 1.0:
                train += f" {short}{getattr(self, name):g}"
        prune = f" prune{self.prune_ratio:g}{self.prune_label()}" if self.prune_ratio else ""
        model = "" if self.model == "tiny" else f"{self.model} "
        return f"{model}{self.recipe}{train}{prune}"

    def prune_label(self) -> str:
        """The pruning recipe's non-default parts, e.g. ``(magnitude,ft2000,kd1,r3)``."""
        parts = [] if self.prune_importance == DEFAULT_IMPORTANCE else [self.prune_importance]
        for name, short in (
            ("prune_finetune_steps", "ft"),
            ("prune_lr", "lr"),
            ("prune_distill", "kd"),
            ("prune_distill_features", "fkd"),
            ("prune_rounds", "r"),
            ("prune_round_to", "x"),
        ):
            if getattr(self, name) is not None:
                parts.append(f"{short}{getattr(self, name):g}")
        parts += ["scratch"] if self.prune_scratch else []
        parts += [f"T{self.prune_teacher[:8]}"] if self.prune_teacher is not None else []
        return f"({','.join(parts)})" if parts else ""

    def cache_label(self) -> str:
        """``cache[branch|oORDER](@target|=knob)``, e.g. ``deepcache1@0.65``, ``taylorseero2=4``;
        empty without a cache."""
        if self.cache == "none":
            return ""
        branch = "" if self.cache_branch is None else str(self.cache_branch)
        branch += "" if self.cache_order is None else f"o{self.cache_order}"
        if self.calibrates_cache:
            knob = f"@{self.target_flop_ratio}"
        else:
            knob = "" if self.cache_knob is None else f"={self.cache_knob:g}"
        return f"{self.cache}{branch}{knob}{_args_label(self.cache_args)}"

    def label(self) -> str:
        """The cell's label: model, exit policy and its target or knob, cache, sampler, guidance."""
        cache = f" {self.cache_label()}" if self.cache != "none" else ""
        if self.exit_flop_ratio is not None:
            knob = f"@{self.exit_flop_ratio}"
        elif self.target_flop_ratio is not None and not self.calibrates_cache:
            knob = f"@{self.target_flop_ratio}"
        elif self.knob is not None:
            knob = f"={self.knob:g}"
        else:
            knob = ""
        if self.patience is not None:
            knob += f" p{self.patience}"
        knob += _args_label(self.policy_args)
        cfg = f" cfg{self.guidance:g}" if self.guidance is not None else ""
        if self.text is not None:
            cfg += f" text:{self.text}/{self.prompts}"
        cfg += "+together" if self.cfg_exit_together else ""
        return f"{self.model_label()} {self.policy}{knob}{cache} {self.sampler_label()}{cfg}"


def _args_label(args: dict[str, Any] | None) -> str:
    """`` {k=v,...}`` of an option table, sorted; empty for none."""
    if not args:
        return ""
    return " {" + ",".join(f"{k}={v}" for k, v in sorted(args.items())) + "}"


def solver_label(
    sampler: str,
    steps: int | None = None,
    *,
    order: int | None = None,
    spacing: str | None = None,
    end: str | None = None,
    lower_order_final: bool | None = None,
    taylor_3m: bool | None = None,
) -> str:
    """``sampler[order][-steps][ spacing][ end][ taylor][ lof=...]``: the options a cell sets
    (``None``: the sampler's default, left out). Cell labels and the report's lines share it."""
    label = sampler + ("" if order is None else str(int(order)))
    label += "" if steps is None else f"-{steps}"
    label += "".join(f" {v}" for v in (spacing, end) if v)
    label += " taylor" if taylor_3m else ""
    return label + ("" if lower_order_final is None else f" lof={bool(lower_order_final)}")


def cell_train_config(cell: Cell) -> TrainConfig:
    """The (normalised) training config of ``cell``'s model, with its size's training budget."""
    kw = dict(
        dataset=cell.dataset,
        model=cell.model,
        recipe=cell.recipe,
        class_cond=cell.guidance is not None and cell.text is None,
        text=cell.text,
        lambda_u=cell.lambda_u,
        lambda_ual=cell.lambda_ual,
    )
    if "flop_target" in RECIPES[cell.recipe].weights:  # DyDiT: one model per FLOP target
        kw.update(flop_target=cell.target_flop_ratio)
    budget = BUDGETS.get(cell.model)
    if budget is not None:
        kw.update(steps=budget.steps, finetune_steps=budget.finetune_steps, **budget.optimiser())
    if cell.finetune_steps is not None:
        kw.update(finetune_steps=cell.finetune_steps)
    return TrainConfig(**kw).normalised()


# The cell fields that set the pruned model's fine-tune, and their PruneConfig names.
PRUNE_FIELDS = {
    "prune_finetune_steps": "finetune_steps",
    "prune_lr": "finetune_lr",
    "prune_distill": "distill",
    "prune_distill_features": "distill_features",
    "prune_rounds": "rounds",
    "prune_scratch": "scratch",
    "prune_round_to": "round_to",
    "prune_teacher": "teacher",
}


def cell_prune_config(cell: Cell, tcfg: TrainConfig) -> PruneConfig:
    """``cell``'s pruning config on checkpoint ``tcfg``, with its size's fine-tune budget."""
    budget = BUDGETS.get(cell.model)
    kw: dict[str, Any] = {} if budget is None else {"finetune_steps": budget.prune_finetune_steps}
    kw.update(
        {field: getattr(cell, name) for name, field in PRUNE_FIELDS.items() if cell._sets(name)}
    )
    return PruneConfig(base=tcfg, ratio=cell.prune_ratio, importance=cell.prune_importance, **kw)


def cell_model_key(cell: Cell) -> str:
    """The artifact key of the model the cell runs (its pruned model's, its checkpoint's, or
    a ``from_pretrained`` folder's fingerprint). Records carry it, so a record made before its
    model was retrained (or the folder's weights changed) is not reused."""
    if is_folder(cell.model):
        return describe(cell.model).key
    tcfg = cell_train_config(cell)
    return cell_prune_config(cell, tcfg).key if cell.prune_ratio > 0 else tcfg.key
