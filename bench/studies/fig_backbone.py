"""Figures for the backbone: training speed, the FID floor, and FID per sampler and step count.

``python -m bench.studies.fig_backbone`` trains (or loads) the default checkpoint, then measures
on the digits default: seconds per training step, the real-vs-real FID floor (train statistics
vs the held-out split), the FID of an untrained model, and the trained model's FID/KID for DDIM
10/20/50/100, DDPM 100 and DPM-Solver++ 10/20 (1,000 samples each, same seed). It writes
``results/backbone/figures.{md,json}`` and a sample grid PNG, atomically.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bench.cache import ArtifactCache
from bench.cli import add_run_options, make_parser
from bench.data import as_tensors, dataset_info, load_dataset
from bench.devices import resolve_device
from bench.measure import write_figures
from bench.metrics import evaluate, fid_floor, get_extractor
from bench.sampling import generate, save_grid
from bench.train import TrainConfig, build_model, load_or_train

DEFAULT_RUNS = [
    ("ddim", 10),
    ("ddim", 20),
    ("ddim", 50),
    ("ddim", 100),
    ("ddpm", 100),
    ("dpm-solver++", 10),
    ("dpm-solver++", 20),
]


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.studies.fig_backbone``: measure the backbone, write its figures."""
    p = make_parser("bench.studies.fig_backbone", __doc__)
    p.add_argument("--samples", type=int, default=1000, help="generated samples per FID")
    p.add_argument("--steps", type=int, default=TrainConfig().steps, help="training steps")
    add_run_options(p, out="results/backbone")
    p.add_argument("--quick", action="store_true", help="smoke run: 3 sampler runs, 200 samples")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        device = resolve_device(a.device)
        cfg = TrainConfig(steps=a.steps)
    except ValueError as e:
        p.error(str(e))
    if a.samples < 2:
        p.error("--samples must be >= 2")
    runs = DEFAULT_RUNS[:3] if a.quick else DEFAULT_RUNS
    n = min(a.samples, 200) if a.quick else a.samples
    cache = ArtifactCache(a.cache_dir)
    out = Path(a.out)

    trained = load_or_train(cfg, cache, device)
    ext = get_extractor("cnn", cfg.dataset, cache)
    info = dataset_info(cfg.dataset)
    shape = (info.channels, info.img_size, info.img_size)
    judge = _Judge(cfg.dataset, ext, cache, fid_floor(cfg.dataset, ext, cache))

    torch.manual_seed(cfg.seed)
    untrained = build_model(cfg).to(device).eval()
    imgs, _ = generate(untrained, trained.schedule, "ddim", 50, n, shape, device=device)
    fid_untrained = judge.score(imgs)["fid"]

    rows = _sampler_rows(trained, runs, n, shape, device, judge, out)
    m = trained.meta
    report = {
        "checkpoint": trained.key,
        "config": m["config"],
        "params": m["params"],
        "train_seconds": m["train_seconds"],
        "seconds_per_step": m["seconds_per_step"],
        "train_device": m["device"],
        "train_threads": m["threads"],
        "extractor": ext.name,
        "extractor_heldout_accuracy": ext.accuracy,
        "samples": n,
        "fid_floor_train_vs_heldout": judge.floor,
        "heldout_images": len(as_tensors(load_dataset(cfg.dataset, "heldout"))[0]),
        "fid_untrained_ddim50": fid_untrained,
        "runs": rows,
        "torch": torch.__version__,
    }
    text = _markdown(report, cfg, trained.key)
    write_figures(out, text, report)
    print(text)
    return 0


@dataclass(frozen=True)
class _Judge:
    """How samples are scored: FID / KID against ``dataset`` with the feature extractor
    ``ext`` (statistics from ``cache``), and the real-vs-real FID ``floor`` they are set
    against."""

    dataset: str
    ext: Any
    cache: ArtifactCache
    floor: float

    def score(self, imgs: Tensor) -> dict[str, float]:
        """:func:`bench.metrics.evaluate` of ``imgs``."""
        return evaluate(imgs, self.dataset, self.ext, self.cache)


def _sampler_rows(trained, runs, n, shape, device, judge: _Judge, out: Path) -> list[dict]:
    """FID / KID / seconds of the trained model for each (sampler, steps) of ``runs`` (``n``
    samples of ``shape`` on ``device``), scored by ``judge``; the DDIM 50 run's samples are
    saved as a grid under ``out``."""
    rows = []
    for sampler, steps in runs:
        t0 = time.perf_counter()
        imgs, nfe = generate(
            trained.model, trained.schedule, sampler, steps, n, shape, device=device, progress=True
        )
        secs = time.perf_counter() - t0
        res = judge.score(imgs)
        rows.append(
            {
                "sampler": sampler,
                "steps": steps,
                "nfe": nfe,
                "fid": res["fid"],
                "fid_over_floor": res["fid"] / judge.floor,
                "kid": res["kid"],
                "seconds": secs,
            }
        )
        if (sampler, steps) == ("ddim", 50):
            save_grid(imgs[:256], out / "samples_ddim50.png")
    return rows


def _markdown(report: dict, cfg: TrainConfig, key: str) -> str:
    n, floor, rows = report["samples"], report["fid_floor_train_vs_heldout"], report["runs"]
    lines = [
        f"# Backbone figures ({cfg.dataset}, model {cfg.model}, checkpoint {key})",
        "",
        f"- parameters: {report['params']:,}; training: {cfg.steps} steps x batch "
        f"{cfg.batch_size}, {report['train_seconds']:.0f} s, "
        f"**{report['seconds_per_step']:.3f} s/step** "
        f"({report['train_device']}, {report['train_threads']} threads)",
        f"- feature extractor `{report['extractor']}`: held-out accuracy "
        f"{100 * report['extractor_heldout_accuracy']:.2f}%",
        f"- FID floor (train stats vs {report['heldout_images']} held-out images): **{floor:.3f}**",
        f"- FID of the untrained model (DDIM 50, {n} samples): "
        f"{report['fid_untrained_ddim50']:.1f}",
        "",
        f"| sampler | steps | NFE | FID ({n} samples) | FID / floor | KID | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['sampler']} | {r['steps']} | {r['nfe']} | {r['fid']:.3f} | "
            f"{r['fid_over_floor']:.2f} | {r['kid']:.3f} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
