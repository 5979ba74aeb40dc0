"""Prune a cached checkpoint, fine-tune it with its own recipe, and cache the result as a recipe.

``python -m bench.prune --ratio 0.3 --importance diff-pruning [--recipe uem]`` builds (or finds
in the cache) one pruned model; the grid does the same for every cell with ``prune_ratio > 0``.

The fine-tune (:class:`PruneConfig`): a step budget and learning rate; knowledge distillation
from the unpruned checkpoint (output and / or block features, :mod:`bench.distill`) beside the
task loss; one-shot or iterative pruning (``rounds`` prune–fine-tune rounds sharing the
budget); EMA as in training. The recipe's own loss is used, so a pruned exit model keeps and
re-tunes its exit heads. ``scratch=True`` is the control every pruning paper is asked for: the
pruned architecture, re-initialised, trained from scratch for the same total compute
(:func:`scratch_steps`).

The cached artifact holds the fine-tuned weights of the pruned model plus, in its metadata, the
base checkpoint id, ratio, criterion, torch-pruning's pruning history and head counts. Loading
rebuilds the architecture by replaying the history on a fresh base model, then loads the weights
(safetensors; nothing is unpickled).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from typing import Any

import torch

from adaptive.recipes import RECIPES
from bench.cache import ArtifactCache
from bench.cli import add_config_options, add_run_options, add_save_every, make_parser
from bench.data import DataSource, as_tensors, data_source
from bench.devices import resolve_device
from bench.distill import Distiller
from bench.resume import DEFAULT_SAVE_EVERY, Resume
from bench.train import TrainConfig, TrainOptions, build_model, load_or_train, train
from bench.trainconfig import check_seed
from blockloop import CostModel
from models import MODELS, UViT
from pruning import DEFAULT_IMPORTANCE, IMPORTANCES, check_prune, prune, replay

__all__ = [
    "PRUNE_REVISION",
    "PruneConfig",
    "PrunedModel",
    "load_or_prune",
    "load_teacher",
    "main",
    "pruned_before_finetune",
    "scratch_steps",
]

log = logging.getLogger(__name__)

# Bumped when PruneConfig's defaults change what a pruned model is, so grid cells that prune
# (and use the defaults) get new keys instead of reading records of the old recipe. 1: the
# default fine-tune went from 500 steps of the task loss to 4,000.
PRUNE_REVISION = 1


@dataclass(frozen=True)
class PruneConfig:
    """Everything that determines a pruned model (its cache key is a hash of this)."""

    base: TrainConfig = field(default_factory=TrainConfig)
    ratio: float = field(default=0.3, metadata={"help": "fraction removed, in [0, 1)"})
    importance: str = field(
        default=DEFAULT_IMPORTANCE,
        metadata={"help": "importance criterion", "choices": IMPORTANCES},
    )
    # The default recipe is the best the pruning sweep found on digits (bench/sweeps/
    # pruning.toml): 4,000 steps (the pre-training length) of the task loss, one-shot
    # (distilling from the unpruned model did worse: it copies the teacher's errors).
    finetune_steps: int = field(
        default=4000, metadata={"help": "fine-tune budget in steps (>= 1; split between rounds)"}
    )
    finetune_lr: float = field(default=5e-4, metadata={"help": "peak learning rate"})
    seed: int = field(default=0, metadata={"help": "importance scoring seed"})
    distill: float = field(
        default=0.0,
        metadata={"help": "weight of eps distillation from the teacher beside the task loss "
                  "(0: off)"},
    )  # fmt: skip
    distill_features: float = field(
        default=0.0,
        metadata={"help": "weight of block-feature distillation (mean MSE of every block's "
                  "hidden state)"},
    )  # fmt: skip
    rounds: int = field(
        default=1,
        metadata={"help": "prune-fine-tune rounds (1: one-shot; k: iterative, importance "
                  "re-scored each round)"},
    )  # fmt: skip
    scratch: bool = field(
        default=False,
        metadata={"help": "the train-small control: the pruned shape trained from scratch with "
                  "the same total compute (pre-training + fine-tune)"},
    )  # fmt: skip
    round_to: int | None = field(
        default=None,
        metadata={"help": "keep each MLP's channels a multiple of this (GEMM-friendly widths; "
                  "a little more is pruned)", "omit_default": True},
    )  # fmt: skip
    teacher: str = field(
        default="base",
        metadata={"help": "distillation teacher: 'base' (the unpruned checkpoint) or a cached "
                  "checkpoint key"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_prune(self.ratio, self.importance, self.rounds, self.round_to)
        check_seed(self.seed)
        if isinstance(self.finetune_steps, bool) or not isinstance(self.finetune_steps, int):
            raise ValueError(f"finetune_steps must be an integer, got {self.finetune_steps!r}")
        if self.finetune_steps < 1:
            raise ValueError(f"finetune_steps must be >= 1, got {self.finetune_steps}")
        if self.finetune_steps < self.rounds:
            raise ValueError(
                f"finetune_steps ({self.finetune_steps}) must cover every round ({self.rounds})"
            )
        if not (math.isfinite(self.finetune_lr) and self.finetune_lr > 0):
            raise ValueError(f"finetune_lr must be a finite number > 0, got {self.finetune_lr}")
        for name in ("distill", "distill_features"):
            w = getattr(self, name)
            if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {w!r}")
        if self.scratch and self.rounds != 1:
            raise ValueError("the scratch control builds the pruned shape once; rounds must be 1")
        if self.teacher != "base":
            if not re.fullmatch(r"[0-9a-f]{16}", self.teacher):
                raise ValueError(
                    f"teacher must be 'base' (the unpruned checkpoint) or a 16-hex checkpoint "
                    f"key (python -m bench.train prints it), got {self.teacher!r}"
                )
            if not self.distills:
                raise ValueError("a teacher is only used with distill > 0 or distill_features > 0")

    @property
    def distills(self) -> bool:
        """Whether the fine-tune distils from a teacher (an output or feature weight > 0)."""
        return self.distill > 0 or self.distill_features > 0

    @property
    def key(self) -> str:
        """The pruned model's artifact key (this config's hash with the base recipe's revision)."""
        # The base's recipe revision is part of its identity: a changed recipe never reuses an
        # old pruned model (TrainConfig.identity holds the rule).
        return self.base.identity_hash(self, kind="pruned")


@dataclass
class PrunedModel:
    """A pruned, fine-tuned model, its config and metadata, and whether it was a cache hit."""

    model: UViT  # pruned, fine-tuned EMA weights, eval mode
    config: PruneConfig
    meta: dict[str, Any]
    cached: bool

    @property
    def schedule(self):
        """The base checkpoint's noise schedule."""
        return self.config.base.make_schedule()


def _base_model(
    pc: PruneConfig, cache: ArtifactCache, device, progress: bool, data: DataSource | None = None
) -> UViT:
    """A fresh copy of the base checkpoint's EMA weights (the cached model is not mutated)."""
    base = load_or_train(pc.base, cache, device, data, progress=progress)
    model = build_model(base.config)
    model.load_state_dict(base.model.state_dict())
    return model.to(device)


def load_teacher(
    pc: PruneConfig, cache: ArtifactCache, device, progress: bool, data: DataSource | None
) -> UViT:
    """The distillation teacher: the unpruned base checkpoint, or the cached checkpoint named by
    ``pc.teacher`` (a ``ValueError`` naming the valid choices when it is not in the cache)."""
    if pc.teacher == "base":
        return _base_model(pc, cache, device, progress, data).eval()
    hit = cache.load("checkpoint", pc.teacher)
    if hit is None:
        raise _no_teacher(pc, cache)
    tensors, meta = hit
    cfg = TrainConfig(**meta["config"])
    if (cfg.dataset, cfg.class_cond) != (pc.base.dataset, pc.base.class_cond):
        raise ValueError(
            f"teacher {pc.teacher} was trained on {cfg.dataset} (class_cond={cfg.class_cond}); "
            f"the pruned model on {pc.base.dataset} (class_cond={pc.base.class_cond})"
        )
    model = build_model(cfg)
    model.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    return model.to(device).eval()


def _no_teacher(pc: PruneConfig, cache: ArtifactCache) -> ValueError:
    return ValueError(
        f"distillation needs a teacher checkpoint: {pc.teacher!r} is not in the cache "
        f"({cache.root}); use teacher 'base' (the unpruned model) or the key of a trained "
        "checkpoint (python -m bench.train prints it)"
    )


def scratch_steps(pc: PruneConfig, full: UViT, pruned: UViT) -> int:
    """Training steps of the train-small control: the compute of pre-training the unpruned
    model plus the pruned model's fine-tune, in steps of the pruned model. A training step costs
    a fixed multiple (about 3) of a forward pass, so the ratio of forward FLOPs converts; a
    teacher's forward in distillation is left out on both sides."""
    T = pc.base.T
    ratio = CostModel(full, T).full / CostModel(pruned, T).full
    return round(pc.base.steps * ratio) + pc.finetune_steps


@dataclass
class _Job:
    """What every part of building one pruned artifact shares."""

    pc: PruneConfig
    cache: ArtifactCache
    device: torch.device | str
    progress: bool
    data: DataSource
    save_every: int = DEFAULT_SAVE_EVERY
    distiller: Distiller | None = None

    def base_model(self, progress: bool | None = None) -> UViT:
        progress = self.progress if progress is None else progress
        return _base_model(self.pc, self.cache, self.device, progress, self.data)

    def finetune(self, model: UViT, steps: int, seed: int, scratch: bool = False):
        """Train ``model`` in place (its EMA weights are loaded back); returns (tensors, meta).
        The run saves its state (:mod:`bench.resume`) under the pruned artifact's key and this
        part of it (round seed or scratch control), so a killed build resumes: finished parts
        return their saved weights at once and pruning replays on identical weights."""
        pc = self.pc
        cfg = dataclasses.replace(
            pc.base, finetune_steps=steps, finetune_lr=pc.finetune_lr, seed=seed
        )
        if scratch:
            cfg = dataclasses.replace(cfg, steps=steps)
        part = f"{'scratch' if scratch else 'finetune'}-{seed}-{steps}"
        resume = Resume.under(
            self.cache, f"pruned-{pc.key}-{part}", {"pruned": pc.key, "part": part}, self.save_every
        )
        opts = TrainOptions(
            device=self.device,
            data=self.data,
            progress=self.progress,
            cache=self.cache,
            resume=resume,
        )
        tensors, meta = train(cfg, opts, model=model, distiller=self.distiller, scratch=scratch)
        ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
        model.load_state_dict(ema)
        return ema, meta


def _build(job: _Job) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Prune (one-shot or in rounds, fine-tuning between), then fine-tune; or, for the scratch
    control, re-initialise the pruned shape and train it. Returns (tensors, metadata)."""
    pc = job.pc
    if pc.distills:
        teacher = load_teacher(pc, job.cache, job.device, job.progress, job.data)
        job.distiller = Distiller(teacher, pc.distill, pc.distill_features)
    model = job.base_model()
    images, _ = as_tensors(job.data.load(pc.base.dataset, "train"))
    per_round = pc.finetune_steps // pc.rounds

    def between(r: int, m: UViT) -> None:
        log.info("pruning round %d/%d done; fine-tuning %d steps", r + 1, pc.rounds, per_round)
        job.finetune(m, per_round, pc.base.seed + r + 1)

    res = prune(
        model,
        pc.ratio,
        pc.importance,
        data=images.to(job.device),
        alphas_cumprod=pc.base.make_schedule().alphas_cumprod,
        seed=pc.seed,
        rounds=pc.rounds,
        between=between,
        round_to=pc.round_to,
    )
    extra: dict[str, Any] = {}
    if pc.scratch:
        torch.manual_seed(pc.seed)
        fresh = build_model(pc.base).to(job.device)  # the architecture's own initialisation
        small = replay(fresh, res.history, res.num_heads)
        steps = scratch_steps(pc, job.base_model(progress=False), small)
        log.info("train-small control: %d steps from scratch", steps)
        tensors, meta = job.finetune(small, steps, pc.base.seed, scratch=True)
        extra["scratch_steps"] = steps
    else:
        last = pc.finetune_steps - per_round * (pc.rounds - 1)
        tensors, meta = job.finetune(res.model, last, pc.base.seed)
    meta.update(
        extra,
        base=pc.base.key,
        prune=dataclasses.asdict(pc),
        history=res.history,
        num_heads=res.num_heads,
    )
    return tensors, meta


def load_or_prune(
    pc: PruneConfig,
    cache: ArtifactCache | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    data: DataSource | None = None,
    save_every: int = DEFAULT_SAVE_EVERY,
) -> PrunedModel:
    """The pruned + fine-tuned model for ``pc``, from the cache or built (and cached); its
    training saves its state every ``save_every`` steps and a rerun resumes it."""
    cache = cache or ArtifactCache()
    data = data_source(data)
    if pc.teacher != "base" and not cache.has("checkpoint", pc.teacher):
        # checked before anything is built or locked
        raise _no_teacher(pc, cache)
    job = _Job(pc, cache, device, progress, data, save_every)
    tensors, meta, cached = cache.get_or_build("pruned", pc.key, lambda: _build(job))
    for state in (cache.root / "resume").glob(f"pruned-{pc.key}-*.safetensors"):
        state.unlink(missing_ok=True)  # the artifact is saved: its parts' states are done
    base = _base_model(pc, cache, device, progress, data)
    model = replay(base, meta["history"], meta["num_heads"])
    model.load_state_dict(tensors)
    return PrunedModel(model.eval(), pc, meta, cached)


def pruned_before_finetune(
    pc: PruneConfig, cache: ArtifactCache | None = None, device: torch.device | str = "cpu"
) -> UViT:
    """The pruned model right after pruning (base weights, no fine-tune), by replaying the
    cached recipe."""
    pm = load_or_prune(pc, cache, device, progress=False)
    base = _base_model(pc, cache or ArtifactCache(), device, False)
    return replay(base, pm.meta["history"], pm.meta["num_heads"]).eval()


# PruneConfig's fields that python -m bench.prune sets (its base: --recipe and --model).
CLI_FIELDS = (
    "ratio",
    "importance",
    "finetune_steps",
    "finetune_lr",
    "distill",
    "distill_features",
    "teacher",
    "rounds",
    "scratch",
    "seed",
    "round_to",
)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.prune``: build (or load) one pruned model and print its key."""
    p = make_parser("bench.prune", __doc__)
    add_config_options(p, PruneConfig, CLI_FIELDS[:2])
    p.add_argument("--recipe", default="full", choices=RECIPES, help="checkpoint to prune")
    p.add_argument("--model", default=TrainConfig().model, choices=MODELS, help="size")
    add_config_options(p, PruneConfig, CLI_FIELDS[2:])
    add_run_options(p)
    add_save_every(p)
    p.add_argument("--data-root", default=None, help="folder of a torchvision dataset")
    p.add_argument("--download", action="store_true", help="download the dataset (online)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        pc = PruneConfig(
            base=TrainConfig(recipe=a.recipe, model=a.model).normalised(),
            **{name: getattr(a, name) for name in CLI_FIELDS},
        )
        device = resolve_device(a.device)
        data = DataSource(a.data_root, a.download)
        cache = ArtifactCache(a.cache_dir)
        pm = load_or_prune(pc, cache, device, not a.no_progress, data, a.save_every)
    except ValueError as e:  # a bad value, or a teacher that is not in the cache
        p.error(str(e))
    params = sum(q.numel() for q in pm.model.parameters())
    state = "cache hit" if pm.cached else "pruned and fine-tuned"
    print(
        f"{state}: {pc.key} (ratio {pc.ratio}, {pc.importance}, {params:,} params, "
        f"heads {sorted(set(pm.meta['num_heads'].values()))})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
