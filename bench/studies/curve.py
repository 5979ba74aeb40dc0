"""FID of a `full` model against its training time: one training run, EMA snapshots on the way.

``python -m bench.studies.curve --dataset mnist --model tiny13-p4`` trains the model the MNIST sweep
uses (the same config, so the sweep loads the result from the cache), keeps the EMA weights
every ``--every`` steps, then samples each snapshot (DDIM 20 by default, seed 0) and scores it
against the training split with the offline extractor. Training time excludes the snapshots'
own time. The learning rate follows the full run's schedule, so a snapshot at step s is that
run part-way, not a model trained for s steps.

Writes ``curve.csv`` (step, training minutes, FID, KID, FID / floor), ``curve.md`` and
``curve.png`` to ``--out``; the floor is the held-out split's FID against the training split.
Also per snapshot: FID against the held-out split, and the mean distance of a sample to its
nearest training image beside the same for held-out real images (memorisation check).
Snapshots are kept in ``--out`` as they are made, and training saves its whole state every
``--save-every`` steps, so an interrupted run resumes training from its last save and scoring
from its last snapshot.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from bench.cache import ArtifactCache, atomic_write_bytes
from bench.cli import add_run_options, add_save_every, make_parser
from bench.data import DATASETS, DatasetError, DataSource, as_tensors, data_source, dataset_info
from bench.devices import resolve_device
from bench.metrics import FeatureExtractor, evaluate, fid_floor, get_extractor
from bench.resume import DEFAULT_SAVE_EVERY, Resume
from bench.sampling import generate, save_grid
from bench.studies.plotting import write_png
from bench.train import BUDGETS, TrainConfig, TrainOptions, build_model, train
from models import MODELS
from samplers import SAMPLERS

__all__ = ["CurveOptions", "main", "training_curve"]

log = logging.getLogger(__name__)

TARGET_OVER_FLOOR = 3.0  # issue 19: the full model within 3x the data set's floor


@dataclass(frozen=True)
class CurveOptions:
    """How :func:`training_curve` scores its snapshots (``samples`` images from ``sampler`` in
    ``sampling_steps`` steps each) and runs: ``device``, ``data``, progress bars, and the
    training state saved every ``save_every`` steps (:mod:`bench.resume`)."""

    samples: int = 1000
    sampler: str = "ddim"
    sampling_steps: int = 20
    device: torch.device | str = "cpu"
    data: DataSource | None = None
    progress: bool = True
    save_every: int = DEFAULT_SAVE_EVERY
    partial: bool = False  # score the snapshots made so far; train no further


def _snapshots(out: Path) -> ArtifactCache:
    return ArtifactCache(out / "snapshots", shipped=())


def _snapshot_key(step: int) -> str:
    return f"step{step:06d}"


def _train_with_snapshots(
    cfg: TrainConfig, every: int, out: Path, cache: ArtifactCache, opts: CurveOptions
) -> None:
    """Train ``cfg``, saving each EMA snapshot under ``out``, and cache the final checkpoint
    under ``cfg.key`` (a later ``load_or_train(cfg)`` is a hit). The run saves its state every
    ``opts.save_every`` steps; a killed run continues from it."""
    snaps = _snapshots(out)

    def keep(step: int, seconds: float, ema) -> None:
        tensors = {k: v.detach().clone() for k, v in ema.state_dict().items()}
        snaps.save("snapshot", _snapshot_key(step), tensors, {"step": step, "seconds": seconds})

    resume = Resume.under(
        cache, f"curve-{cfg.key}", {"curve": cfg.key, "every": every}, opts.save_every
    )
    run = TrainOptions(
        device=opts.device,
        data=opts.data,
        progress=opts.progress,
        cache=cache,
        snapshot=keep,
        snapshot_every=every,
        resume=resume,
    )
    tensors, meta = train(cfg, run)
    if not cache.has("checkpoint", cfg.key):
        cache.save("checkpoint", cfg.key, tensors, meta)
    resume.discard()


def nearest_distance(images: Tensor, reference: Tensor) -> Tensor:
    """Each image's L2 distance (pixels in [-1, 1]) to its nearest ``reference`` image: samples
    much closer to the training set than held-out real images are is memorisation."""
    a, b = images.flatten(1).float(), reference.flatten(1).float()
    return torch.cat([torch.cdist(chunk, b).min(1).values for chunk in a.split(256)])


def _snapshot_steps(cfg: TrainConfig, every: int) -> list[int]:
    steps = list(range(every, cfg.steps, every))
    return [*steps, cfg.steps]


@dataclass(frozen=True)
class _References:
    """What every snapshot is scored against (computed once per curve)."""

    train_images: Tensor
    nn_real: float  # held-out real images' mean distance to their nearest training image
    ext: FeatureExtractor
    floor: float


def training_curve(
    cfg: TrainConfig,
    every: int,
    out: Path,
    cache: ArtifactCache,
    opts: CurveOptions | None = None,
) -> pd.DataFrame:
    """Rows of (step, train_minutes, fid, kid, fid_over_floor) for every snapshot of ``cfg``'s
    training run (trained here unless every snapshot is already in ``out``); ``opts``: sampling
    and run options (:class:`CurveOptions`; default: its defaults)."""
    opts = opts if opts is not None else CurveOptions()
    data = opts.data
    steps = _snapshot_steps(cfg, every)
    snaps = _snapshots(out)
    if opts.partial:  # a long run watched while it trains (its snapshots are written atomically)
        steps = [s for s in steps if snaps.has("snapshot", _snapshot_key(s))]
        if not steps:
            raise ValueError(f"--partial: no snapshot of this run in {out} yet")
    elif not all(snaps.has("snapshot", _snapshot_key(s)) for s in steps):
        _train_with_snapshots(cfg, every, out, cache, opts)
    train_images, _ = as_tensors(data_source(data).load(cfg.dataset, "train"))
    held_images, _ = as_tensors(data_source(data).load(cfg.dataset, "heldout"))
    nn_real = nearest_distance(held_images, train_images).mean().item()
    ext = get_extractor("cnn", cfg.dataset, cache, data=data)
    refs = _References(train_images, nn_real, ext, fid_floor(cfg.dataset, ext, cache, data))
    rows: list[dict[str, Any]] = []
    last: Tensor | None = None
    for s in steps:
        hit = snaps.load("snapshot", _snapshot_key(s))
        if hit is None:
            raise RuntimeError(f"snapshot of step {s} is missing or corrupt in {out}; rerun")
        row, last = _score(cfg, hit, refs, cache, opts)
        rows.append({"step": s, **row})
        log.info(
            "step %d (%.1f min): FID %.2f (%.2f x floor %.2f)",
            s,
            row["train_minutes"],
            row["fid"],
            row["fid_over_floor"],
            refs.floor,
        )
    df = pd.DataFrame(rows)
    _write(df, cfg, out, last)
    return df


def _score(
    cfg: TrainConfig,
    snapshot: tuple[dict[str, Tensor], dict[str, Any]],
    refs: _References,
    cache: ArtifactCache,
    opts: CurveOptions,
) -> tuple[dict[str, Any], Tensor]:
    """One snapshot's row of the curve (all but its step) and its samples."""
    tensors, meta = snapshot
    info = dataset_info(cfg.dataset)
    model = build_model(cfg)
    model.load_state_dict(tensors)
    model = model.to(opts.device).eval()
    shape = (info.channels, info.img_size, info.img_size)
    imgs, _ = generate(
        model,
        cfg.make_schedule(),
        opts.sampler,
        opts.sampling_steps,
        opts.samples,
        shape,
        device=opts.device,
    )
    res = evaluate(imgs, cfg.dataset, refs.ext, cache, data=opts.data)
    held = evaluate(imgs, cfg.dataset, refs.ext, cache, data=opts.data, split="heldout")
    row = {
        "train_minutes": meta["seconds"] / 60,
        "fid": res["fid"],
        "kid": res["kid"],
        "fid_over_floor": res["fid"] / refs.floor,
        "floor": refs.floor,
        "fid_heldout": held["fid"],
        "nn_train": nearest_distance(imgs, refs.train_images).mean().item(),
        "nn_train_real": refs.nn_real,
        "samples": opts.samples,
        "sampler": f"{opts.sampler}-{opts.sampling_steps}",
        "extractor": refs.ext.name,
    }
    return row, imgs


def _flatness(df: pd.DataFrame) -> str:
    """How much FID improved over the last quarter of training (the convergence test)."""
    last = df["step"].iloc[-1]
    quarter = df[df["step"] <= 0.75 * last]
    if quarter.empty:
        return ""
    a, b = float(quarter["fid"].iloc[-1]), float(df["fid"].iloc[-1])
    step = int(quarter["step"].iloc[-1])
    return f"Last quarter: FID {a:.2f} at step {step} -> {b:.2f} ({(a - b) / a:+.1%} better)."


def _write(df: pd.DataFrame, cfg: TrainConfig, out: Path, last: Tensor | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "curve.csv", df.to_csv(index=False).encode())
    floor = float(df["floor"].iloc[0])
    lines = [
        f"# Training curve: {cfg.model} on {cfg.dataset} (checkpoint {cfg.key[:16]})",
        "",
        f"FID of {int(df['samples'].iloc[0])} samples ({df['sampler'].iloc[0]}) against the "
        f"training split, extractor {df['extractor'].iloc[0]}; floor (held-out vs training) "
        f"{floor:.2f}, target {TARGET_OVER_FLOOR:g} x floor = {TARGET_OVER_FLOOR * floor:.2f}.",
        "",
        "FID (held-out): against the held-out split. NN dist: mean L2 distance of a sample to "
        f"its nearest training image; held-out real images score {df['nn_train_real'].iloc[0]:.3f}"
        " (a sample much closer than that is copied). " + _flatness(df),
        "",
        "| step | training min | FID | FID / floor | FID (held-out) | KID | NN dist |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in df.itertuples():
        lines.append(
            f"| {r.step} | {r.train_minutes:.1f} | {r.fid:.2f} | {r.fid_over_floor:.2f} | "
            f"{r.fid_heldout:.2f} | {r.kid:.4f} | {r.nn_train:.3f} |"
        )
    atomic_write_bytes(out / "curve.md", ("\n".join(lines) + "\n").encode())
    fig, (ax, nn) = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
    ax.plot(df["step"], df["fid"], "o-", label="FID vs training split")
    ax.plot(df["step"], df["fid_heldout"], "s--", label="FID vs held-out split")
    ax.axhline(floor, color="grey", ls=":", label=f"floor {floor:.2f}")
    ax.axhline(TARGET_OVER_FLOOR * floor, color="tab:red", ls="--", label="3 x floor")
    ax.set_yscale("log")
    ax.set_xlabel("training step (snapshots of one run)")
    ax.set_ylabel("FID (log)")
    ax.set_title(f"{cfg.dataset}, {cfg.model}: FID along training", fontsize=10)
    ax.legend(fontsize=8)
    # Memorisation: samples closer to the training set than held-out real images are.
    nn.plot(df["step"], df["nn_train"], "o-", label="samples")
    nn.axhline(df["nn_train_real"].iloc[0], color="grey", ls=":", label="held-out real images")
    nn.set_xlabel("training step")
    nn.set_ylabel("mean L2 distance to nearest training image")
    nn.set_title("memorisation check", fontsize=10)
    nn.legend(fontsize=8)
    write_png(fig, out / "curve.png")
    if last is not None:
        save_grid(last[:64], out / "samples_final.png", nrow=8)


def _parser():
    p = make_parser("bench.studies.curve", __doc__)
    p.add_argument("--dataset", default="mnist", choices=list(DATASETS), help="training data")
    p.add_argument("--model", default="tiny13-p4", choices=MODELS, help="size by name")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="training steps (default: the model's budget in bench.train.BUDGETS, else 4000)",
    )
    d = TrainConfig()
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"images per step (default: the model's budget's, else {d.batch_size})",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"peak learning rate, warm-up then cosine (default: the budget's, else {d.lr})",
    )
    p.add_argument("--every", type=int, default=500, help="steps between snapshots")
    p.add_argument("--samples", type=int, default=1000, help="samples scored per snapshot")
    p.add_argument("--sampler", default="ddim", choices=SAMPLERS, help="sampler")
    p.add_argument("--sampling-steps", type=int, default=20, help="sampler steps")
    add_run_options(p, out="results/curve-mnist")
    add_save_every(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--partial",
        action="store_true",
        help="score the snapshots already in --out and train no further (watch a long run "
        "while another process trains it; the full run rewrites the curve)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.studies.curve``: train with snapshots, score them and print the table;
    returns 1 if no snapshot was scored."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = _parser()
    a = p.parse_args(argv)
    for name, least in (("every", 1), ("samples", 2), ("sampling_steps", 1)):
        if getattr(a, name) < least:  # FID needs two samples for a covariance
            p.error(f"--{name.replace('_', '-')} must be >= {least}, got {getattr(a, name)}")
    try:
        budget = BUDGETS.get(a.model)
        steps = a.steps or (budget.steps if budget is not None else TrainConfig().steps)
        given = {"batch_size": a.batch_size, "lr": a.lr}
        kw = {
            **(budget.optimiser() if budget else {}),
            **{k: v for k, v in given.items() if v is not None},
        }
        cfg = TrainConfig(dataset=a.dataset, model=a.model, steps=steps, **kw).normalised()
        opts = CurveOptions(
            samples=a.samples,
            sampler=a.sampler,
            sampling_steps=a.sampling_steps,
            device=resolve_device(a.device),
            progress=not a.no_progress,
            save_every=a.save_every,
            partial=a.partial,
        )
        df = training_curve(cfg, a.every, Path(a.out), ArtifactCache(a.cache_dir), opts)
    except (DatasetError, ValueError) as e:
        p.error(str(e))
    print((Path(a.out) / "curve.md").read_text(), end="")
    return 0 if len(df) else 1


if __name__ == "__main__":
    sys.exit(main())
