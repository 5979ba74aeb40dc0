"""One cell, one runnable pipeline: model -> pruning -> exits / cache -> sampler -> evaluation.

:func:`build_pipeline` is the only place that turns a :class:`~bench.cell.Cell` into something
that samples: the grid (:mod:`bench.run`), the figure scripts and the asv suite all go through
it, so a knob means the same thing everywhere. The exit knob is calibrated on the cell's own
sampler, guidance, device and autocast (calibrated knobs do not transfer across numerics).
A step-level cache (:mod:`caching`) runs inside the same executor; Learning-to-Cache's router is
learned for the cell's model, sampler and step count and cached as an artifact
(:func:`bench.cachefits.load_or_learn_router`). A pretrained latent model's samples are decoded
by its VAE before anything scores them (:mod:`bench.pretrained`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from adaptive.calibrate import Calibration, CalibrationRun, calibrate
from adaptive.policies import ExitSpec
from bench.cache import ArtifactCache
from bench.cachefits import (
    L2C_TRAINING,
    cell_conditions,
    load_or_fit,
    load_or_learn_router,
)
from bench.cell import Cell, cell_prune_config, cell_train_config
from bench.data import DatasetInfo, DataSource, dataset_info
from bench.devices import AUTOCAST, autocast, resolve_device
from bench.metrics import class_agreement, evaluate, get_extractor
from bench.pretrained import PretrainedModel, load_pretrained_model
from bench.prune import load_or_prune
from bench.sampling import generate, image_sampler_options
from bench.text import TextContext, load_context
from bench.train import TrainedModel, load_or_train
from blockloop import CostModel, EarlyExitDenoiser
from caching import CACHE_OPTIONS, CacheSpec
from models import UViT
from models.pretrained import is_folder
from samplers import ClassifierFreeGuidance, Denoiser, VPSchedule

__all__ = [
    "CALIBRATION_SAMPLES",
    "TIMING_BATCH",
    "Pipeline",
    "build_pipeline",
]

# Samples are generated in batches of this size (the wall-clock unit of a cell).
TIMING_BATCH = 250
CALIBRATION_SAMPLES = 64  # the calibration batch (its seed is distinct from evaluation seeds)


@dataclass
class Pipeline:
    """A cell made runnable: the models it runs, its calibrated executor and how it samples."""

    cell: Cell
    device: torch.device
    base: TrainedModel | PretrainedModel  # the unpruned model (the FLOP and wall-clock reference)
    model: UViT  # what runs: the base model or its pruned version
    executor: EarlyExitDenoiser
    calibration: Calibration | None
    info: DatasetInfo
    knob: float | None  # the exit policy's knob as run (calibrated, set, or None: its default)
    data: DataSource | None = None
    context: TextContext | None = None  # a text model's encoded prompts

    @property
    def schedule(self) -> VPSchedule:
        """The noise schedule the base checkpoint was trained with."""
        return self.base.schedule

    @property
    def cache_knob(self) -> float | None:
        """The cache policy's knob as run (None without a cache)."""
        return None if self.executor.cache is None else self.executor.cache.knob

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of what the sampler draws (a latent model's latents)."""
        return tuple(self.model.input_shape)

    @property
    def rows_per_sample(self) -> int:
        """Denoiser rows per sample and step (2 under classifier-free guidance)."""
        return 2 if self.cell.guidance is not None else 1

    @functools.cached_property
    def unpruned_flops(self) -> int:
        """FLOPs of one row through the unpruned, never-exiting model (the executor's own cost
        model when nothing was pruned, measured once otherwise)."""
        if self.model is self.base.model:
            return self.executor.costs.full
        return CostModel(self.base.model, self.schedule.T).full

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` to the cell's ``autocast`` dtype (a no-op for ``none``)."""
        return autocast(self.device, AUTOCAST[self.cell.autocast])

    def denoiser(self, inner: Denoiser | None = None) -> Denoiser:
        """``inner`` (default: the executor) under the cell's guidance (against the null
        class or the empty prompt)."""
        inner = self.executor if inner is None else inner
        if self.cell.guidance is None:
            return inner
        return ClassifierFreeGuidance(inner, self.cell.guidance, self.model.null_cond())

    def conditions(self, n: int) -> tuple[Tensor | None, Tensor | None]:
        """The conditions of ``n`` samples and the class each asks for: prompt contexts
        (:meth:`bench.text.TextContext.conditions`) for a text model, labels cycling through
        the classes for a guided class-conditional one, else (None, None)."""
        return cell_conditions(self.cell, n, self.info, self.context)

    def sample(
        self,
        n: int,
        seed: int,
        *,
        denoiser: Denoiser | None = None,
        timings: list[float] | None = None,
        batch_size: int = TIMING_BATCH,
    ) -> tuple[Tensor, int]:
        """``n`` images (on the CPU) and the NFE per batch, under the cell's autocast: the
        samples, decoded by a pretrained latent model's VAE (:mod:`bench.pretrained`)."""
        with self.autocast():
            images, nfe = generate(
                self.denoiser() if denoiser is None else denoiser,
                self.schedule,
                self.cell.sampler,
                self.cell.steps,
                n,
                self.shape,
                batch_size=batch_size,
                seed=seed,
                cond=self.conditions(n)[0],
                device=self.device,
                timings=timings,
                **self.cell.sampler_options,
            )
        if isinstance(self.base, PretrainedModel):
            images = self.base.decode(images)
        return images, nfe

    def evaluate(self, images: Tensor, cache: ArtifactCache) -> dict[str, Any]:
        """FID / KID of ``images`` with the cell's extractor and reference split, and for
        conditional cells the agreement: the share of samples the offline digit classifier
        puts in the class their condition asks for (the offline analogue of a CLIP score)."""
        ext = get_extractor(
            self.cell.extractor, self.cell.dataset, cache, device=str(self.device), data=self.data
        )
        out = evaluate(
            images, self.cell.dataset, ext, cache, split=self.cell.reference, data=self.data
        )
        classes = self.conditions(len(images))[1]
        out["agreement"] = None
        if classes is not None:
            clf = (
                ext if hasattr(ext, "classify") else get_extractor("cnn", self.cell.dataset, cache)
            )
            out["agreement"] = class_agreement(images, classes, clf)
        return out


def build_pipeline(
    cell: Cell,
    cache: ArtifactCache | None = None,
    device: torch.device | None = None,
    *,
    data: DataSource | None = None,
    progress: bool = True,
    phase: Callable[[str], None] | None = None,
) -> Pipeline:
    """The cell's trained (and, if asked, pruned) model, its exit policy and cache with their
    knobs calibrated where the cell sets a FLOP target, on ``device`` (default:
    ``cell.device``). Trained and pruned models come from the cache (built on first use).
    ``phase`` is told "train", "prune" and "calibrate" as each begins (:mod:`bench.progress`)."""
    phase = phase or (lambda name: None)
    cache = cache or ArtifactCache()
    device = resolve_device(cell.device) if device is None else device
    base, model, model_key = _models(cell, cache, device, data, progress, phase)
    info = dataset_info(cell.dataset)
    context = None if cell.text is None else load_context(cell.text, cell.dataset, cache)
    sampler_kw = {**image_sampler_options(cell.sampler), **cell.sampler_options}
    built = _Built(cell, model, base.schedule, sampler_kw, device)
    cache_spec = _cache_spec(built, model_key, cache, progress, (info, context))
    exit_spec, calibration = cell.exit_spec, None
    if cell.calibrates_exit or cell.calibrates_cache:
        phase("calibrate")
        run = _calibration_run(built, info, context)
        exit_spec, cache_spec, calibration = _calibrate(built, exit_spec, cache_spec, run)
    executor = EarlyExitDenoiser(
        model,
        exit_spec.build(),
        base.schedule.T,
        paired=cell.cfg_exit_together,
        cache=None if cache_spec is None else cache_spec.build(),
    )
    return Pipeline(
        cell, device, base, model, executor, calibration, info, exit_spec.knob, data, context
    )


@dataclass(frozen=True)
class _Built:
    """What the pipeline builder has settled for a cell: the model that runs, its schedule,
    the sampler's options and the device."""

    cell: Cell
    model: UViT
    schedule: VPSchedule
    sampler_kw: dict[str, Any]
    device: torch.device


def _models(cell, cache, device, data, progress, phase) -> tuple[TrainedModel, UViT, str]:
    """The base checkpoint, the model that runs (it, or its pruned version) and that model's
    artifact key."""
    if is_folder(cell.model):
        base = load_pretrained_model(cell, device)
        return base, base.model, base.key
    tcfg = cell_train_config(cell)
    phase("train")
    base = load_or_train(tcfg, cache, device, data, progress=progress)
    if cell.prune_ratio == 0:
        return base, base.model, tcfg.key
    phase("prune")
    pcfg = cell_prune_config(cell, tcfg)
    model = load_or_prune(pcfg, cache, device, progress=progress, data=data).model
    return base, model, pcfg.key


def _cache_spec(
    built: _Built, model_key: str, cache: ArtifactCache, progress: bool, conditions
) -> CacheSpec | None:
    """The cell's cache spec with the options the pipeline owns: the guidance branches of a
    batch-level rule, and Learning-to-Cache's router (learned for this model, or cached)."""
    cell, spec = built.cell, built.cell.cache_spec
    if spec is None:
        return None
    options = dict(spec.options)
    if cell.guidance is not None and "branches" in CACHE_OPTIONS.get(cell.cache, ()):
        options["branches"] = 2  # a batch-level rule decides per guidance branch
    cls = spec.policy_class
    if cls.needs_fit and not all(name in options for name in cls.fitted):
        default = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()}
        inputs = {k: options[k] for k in cls.fit_inputs if options.get(k, default[k]) != default[k]}
        options.update(load_or_fit(built, cls, model_key, cache, conditions, inputs))
    if spec.policy_class.needs_router:
        router_cond = None
        if cell.text is not None:  # the router learns on the cell's own prompts
            info, context = conditions
            router_cond = cell_conditions(cell, L2C_TRAINING["n"], info, context)[0]
            router_cond = router_cond.to(built.device)
        options["router"] = load_or_learn_router(
            built.model,
            model_key,
            built.schedule,
            cell,
            built.sampler_kw,
            cache,
            progress=progress,
            cond=router_cond,
        )
    return replace(spec, options=options)


def _calibration_run(built: _Built, info: DatasetInfo, context) -> CalibrationRun:
    """The calibration pass of the cell: its sampler, steps, options, guidance and numerics.
    Text cells calibrate on their own prompts; class-conditional ones cycle the classes."""
    cell, cond = built.cell, None
    if cell.text is not None:
        cond = cell_conditions(cell, CALIBRATION_SAMPLES, info, context)[0].to(built.device)
    return CalibrationRun(
        sampler=cell.sampler,
        steps=cell.steps,
        n=CALIBRATION_SAMPLES,
        sampler_kw=built.sampler_kw,
        guidance=cell.guidance,
        paired=cell.cfg_exit_together,
        autocast=AUTOCAST[cell.autocast],
        cond=cond,
    )


def _calibrate(
    built: _Built, exit_spec: ExitSpec, cache_spec: CacheSpec | None, run: CalibrationRun
) -> tuple[ExitSpec, CacheSpec | None, Calibration]:
    """Each FLOP target on the knob it tunes: ``exit_flop_ratio`` on the exit knob with no
    cache, then ``target_flop_ratio`` on the knob the specs leave open (the cache's where the
    cell calibrates a cache, else the exit policy's). Returns the specs with their knobs set
    and the last calibration (its ratio is the whole denoiser's)."""
    cell, model, schedule = built.cell, built.model, built.schedule
    if cell.exit_flop_ratio is not None:
        alone = calibrate(model, schedule, exit_spec, cell.exit_flop_ratio, run=run)
        exit_spec = exit_spec.with_knob(alone.knob)
    cal = calibrate(model, schedule, exit_spec, cell.target_flop_ratio, cache=cache_spec, run=run)
    if cell.calibrates_cache:
        return exit_spec, cache_spec.with_knob(cal.knob), cal
    return exit_spec.with_knob(cal.knob), cache_spec, cal
