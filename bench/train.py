"""Train (or load from the cache) a U-ViT denoiser, keyed by a hash of its config.

``python -m bench.train`` trains the CPU default on the bundled digits. The checkpoint is keyed
by a hash of every option below, so a second call with the same options is a cache hit and only
loads. Training: AdamW, linear learning-rate warm-up, EMA
with a warm-up of its decay, eps-prediction (Ho et al. 2020), a tqdm bar with the loss.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import torch
from torch import Tensor

from adaptive.recipes import LOSS_WEIGHTS, RECIPES, get_recipe
from bench.cache import ArtifactCache
from bench.cli import add_config_options, add_save_every, make_parser
from bench.data import DataSource
from bench.devices import AUTOCAST, resolve_device
from bench.resume import DEFAULT_SAVE_EVERY, Resume

# The config and the loop live in their own modules; callers import them from here.
from bench.trainconfig import BUDGETS, Budget, TrainConfig, TrainedModel, build_model
from bench.trainloop import TrainOptions, train

__all__ = [
    "BUDGETS",
    "Budget",
    "TrainConfig",
    "TrainOptions",
    "TrainedModel",
    "build_model",
    "load_or_train",
    "main",
    "resolve_device",
    "train",
]

log = logging.getLogger(__name__)


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
        opts = TrainOptions(
            device=device, data=data, progress=progress, autocast=autocast, cache=cache,
            resume=resume,
        )  # fmt: skip
        return train(cfg, opts, init=init)

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
    "flop_target",
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
    for name in (*LOSS_WEIGHTS, "flop_target"):  # no option silently ignored
        if getattr(a, name) is not None and name not in weights:
            flag = "--" + name.replace("_", "-")
            users = ", ".join(r for r in RECIPES if name in get_recipe(r).weights)
            raise ValueError(f"{flag} has no effect with recipe {a.recipe!r} (it feeds: {users})")
    given = {n: getattr(a, n) for n in CLI_FIELDS if getattr(a, n) is not None}
    return TrainConfig(**given)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.train``: train (or load) one checkpoint and print its key and path;
    returns 1 if training diverged."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = _parser()
    a = p.parse_args(argv)
    try:
        cfg = config_from_args(a)
        device = resolve_device(a.device)
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
