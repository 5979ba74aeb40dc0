"""Why the 28x28 model does not draw digits: candidate recipes trained for equal CPU time.

``python -m bench.studies.diagnose --minutes 15`` trains each candidate for the same CPU-time
budget (the process's CPU seconds, so other load on the machine does not shorten a candidate's
budget; training only, evaluation is not counted) on the MNIST training split and measures,
along the way, the EMA weights' held-out epsilon-MSE at fixed noise levels (the same noise for
every candidate) and, at half time and at the end, FID of DDIM samples against the training split
with the offline extractor (:mod:`bench.metrics`). Candidates (:data:`CANDIDATES`):

- ``recipe``: today's MNIST recipe, ``tiny13-p4`` (49 tokens of 4x4 patches), batch 64, lr 1e-3;
- ``p2``: 2x2 patches (196 tokens) at half the width, so a step costs about as much;
- ``small-batch``: ``tiny13-p4`` with batch 32 (twice the updates per CPU second), longer
  warm-up;
- ``low-lr``: ``tiny13-p4`` with batch 32 at lr 3e-4 (U-ViT's and DiT's papers train at
  1e-4 to 2e-4; the digits recipe's high rate may not suit 13 blocks of 49 tokens);
- ``dit``: a diffusers DiT (adaLN-Zero, no long skips) with the same 4x4 patches and width, 8
  blocks (1.6M parameters, as ``tiny13-p4``): whether the U-ViT's architecture is the cause;
- ``unet``: a small convolutional U-Net (diffusers' ``UNet2DModel``) through the same data,
  loss, sampler and metric path: if it draws digits where the U-ViTs do not, the cause is the
  transformer's recipe, not the pipeline.

Every candidate uses the suite's noise schedule, noisy batches (:func:`bench.steps.noisy_batch`)
and EMA (:func:`bench.steps.ema_update`); the learning rate warms up, then follows a cosine over
the time budget. Each finished candidate is written to ``--out`` as JSON (atomically), so a
killed run resumes at the first unfinished candidate. Writes ``diagnose.md`` and
``diagnose.png`` (FID against training minutes; epsilon-MSE against the noise level).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench.cache import ArtifactCache, atomic_write_bytes
from bench.cli import make_parser
from bench.data import DatasetError, as_tensors, data_source, dataset_info
from bench.metrics import evaluate, fid_floor, get_extractor
from bench.sampling import generate, save_grid
from bench.steps import BatchStream, ema_update, noisy_batch
from bench.studies.plotting import write_png
from bench.train import TrainConfig
from models import make_model

__all__ = ["CANDIDATES", "Candidate", "main", "run_candidate"]

log = logging.getLogger(__name__)

EPS_TIMESTEPS = (20, 100, 300, 500, 700, 900)  # held-out epsilon-MSE measured at these t


class UNetDenoiser(nn.Module):
    """diffusers' ``UNet2DModel`` behind the suite's denoiser call ``f(x, t, cond) -> eps``."""

    def __init__(self, img_size: int, channels: int) -> None:
        super().__init__()
        from diffusers import UNet2DModel

        self.unet = UNet2DModel(
            sample_size=img_size,
            in_channels=channels,
            out_channels=channels,
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=8,
        )

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.unet(x, t).sample


@dataclass(frozen=True)
class Candidate:
    """One recipe: the model it builds for (img_size, channels) and its optimiser settings."""

    name: str
    build: Callable[[int, int], nn.Module]
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 200
    ema_decay: float = 0.999


def _uvit(**overrides) -> Callable[[int, int], nn.Module]:
    return lambda size, ch: make_model("tiny13-p4", size, ch, **overrides)


def _dit(size: int, channels: int) -> nn.Module:
    from models.dit import make_dit

    return make_dit(size, channels, 0, patch_size=4, embed_dim=96, depth=8, num_heads=4)


CANDIDATES: dict[str, Candidate] = {
    c.name: c
    for c in (
        Candidate("recipe", _uvit()),
        Candidate("p2", _uvit(patch_size=2, embed_dim=48, num_heads=3)),
        Candidate("small-batch", _uvit(), batch_size=32, warmup=500),
        Candidate("unet", UNetDenoiser),
        Candidate("low-lr", _uvit(), batch_size=32, lr=3e-4, warmup=500),
        Candidate("dit", _dit, batch_size=32, lr=3e-4, warmup=500),
    )
}


@dataclass(frozen=True)
class _Setup:
    """What every candidate shares: data, schedule, held-out probe and FID references."""

    dataset: str
    train: Any  # the training split (a Dataset)
    probe: tuple[Tensor, Tensor, Tensor]  # held-out x0, fixed eps, fixed t per EPS_TIMESTEPS
    cfg: TrainConfig  # noise settings: schedule, T, unconditional
    cache: ArtifactCache
    samples: int


def _eps_mse(model: nn.Module, setup: _Setup) -> dict[str, float]:
    """Held-out epsilon-MSE of ``model`` at each of :data:`EPS_TIMESTEPS` (fixed noise)."""
    x0, eps, _ = setup.probe
    ab = setup.cfg.make_schedule().alphas_cumprod.float()
    out = {}
    with torch.no_grad():
        for t in EPS_TIMESTEPS:
            a = ab[t]
            x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
            tt = torch.full((x0.shape[0],), t, dtype=torch.long)
            pred = torch.cat(
                [model(xb, tb, None) for xb, tb in zip(x_t.split(250), tt.split(250), strict=True)]
            )
            out[str(t)] = float((pred - eps).pow(2).mean())
    return out


def _fid(model: nn.Module, setup: _Setup) -> tuple[float, Tensor]:
    info = dataset_info(setup.dataset)
    shape = (info.channels, info.img_size, info.img_size)
    imgs, _ = generate(model, setup.cfg.make_schedule(), "ddim", 20, setup.samples, shape)
    ext = get_extractor("cnn", setup.dataset, setup.cache)
    return evaluate(imgs, setup.dataset, ext, setup.cache)["fid"], imgs


def _lr(c: Candidate, step: int, frac: float) -> float:
    """Linear warm-up over ``c.warmup`` steps, then a cosine over the time budget to lr / 20."""
    if step < c.warmup:
        return c.lr * (step + 1) / c.warmup
    return c.lr / 20 + 0.5 * (c.lr - c.lr / 20) * (1 + math.cos(math.pi * min(frac, 1.0)))


def run_candidate(c: Candidate, setup: _Setup, seconds: float, evals: int = 4) -> dict[str, Any]:
    """Train ``c`` for ``seconds`` of CPU time; returns its measured rows and samples."""
    torch.manual_seed(0)
    info = dataset_info(setup.dataset)
    model = c.build(info.img_size, info.channels)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=0.03)
    gen = torch.Generator().manual_seed(0)
    stream = BatchStream(setup.train, c.batch_size, gen)
    ab = setup.cfg.make_schedule().alphas_cumprod.float()
    rows, step, trained, last = [], 0, 0.0, None
    for k in range(1, evals + 1):
        while trained < seconds * k / evals:
            t0 = time.process_time()
            for g in opt.param_groups:
                g["lr"] = _lr(c, step, trained / seconds)
            x0, y = next(stream)
            x_t, t, cond, eps = noisy_batch(setup.cfg, info, x0, y, ab, gen, "cpu")
            loss = (model(x_t, t, cond) - eps).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            ema_update(ema, model, step, c.ema_decay)
            step, trained = step + 1, trained + time.process_time() - t0
        row = {"step": step, "minutes": trained / 60, "loss": loss.item(), "eps": {}}
        row["eps"] = _eps_mse(ema.eval(), setup)
        if k == evals or k == evals // 2:
            row["fid"], last = _fid(ema, setup)
        log.info("%s: %s", c.name, row)
        rows.append(row)
    params = sum(p.numel() for p in model.parameters())
    return {"name": c.name, "params": params, "batch_size": c.batch_size, "rows": rows}, last


def _setup(dataset: str, cache: ArtifactCache, samples: int, probe: int | None = None) -> _Setup:
    """The shared setup; ``probe``: held-out images in the epsilon-MSE probe (default all)."""
    src = data_source(None)
    held, _ = as_tensors(src.load(dataset, "heldout"), probe)
    gen = torch.Generator().manual_seed(1234)
    eps = torch.randn(held.shape, generator=gen)
    cfg = TrainConfig(dataset=dataset, model="tiny13-p4" if dataset == "mnist" else "tiny")
    probe = (held, eps, torch.tensor(EPS_TIMESTEPS))
    return _Setup(dataset, src.load(dataset, "train"), probe, cfg, cache, samples)


def _write(results: list[dict[str, Any]], floor: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [
        "# Diagnosis: candidate recipes at equal CPU time",
        "",
        f"FID: DDIM 20 samples against the training split (offline CNN); floor {floor:.2f}, "
        f"target 3 x floor = {3 * floor:.2f}. eps-MSE: EMA weights on the held-out split, "
        "fixed noise, at the timestep named.",
        "",
        "| candidate | params | batch | steps | train min | loss | FID | "
        + " | ".join(f"eps t={t}" for t in EPS_TIMESTEPS)
        + " |",
        "|---" * (7 + len(EPS_TIMESTEPS)) + "|",
    ]
    fig, (ax, ex) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    for r in results:
        for row in r["rows"]:
            fid = f"{row['fid']:.1f}" if "fid" in row else ""
            eps = " | ".join(f"{row['eps'][str(t)]:.4f}" for t in EPS_TIMESTEPS)
            lines.append(
                f"| {r['name']} | {r['params'] / 1e6:.2f}M | {r['batch_size']} | {row['step']} | "
                f"{row['minutes']:.1f} | {row['loss']:.4f} | {fid} | {eps} |"
            )
        scored = [row for row in r["rows"] if "fid" in row]
        ax.plot([x["minutes"] for x in scored], [x["fid"] for x in scored], "o-", label=r["name"])
        final = r["rows"][-1]["eps"]
        ex.plot(EPS_TIMESTEPS, [final[str(t)] for t in EPS_TIMESTEPS], "o-", label=r["name"])
    ax.axhline(3 * floor, color="tab:red", ls="--", label="3 x floor")
    ax.set(yscale="log", xlabel="training CPU minutes", ylabel="FID (log)")
    ax.set_title("FID along training, equal CPU time", fontsize=10)
    ex.set(yscale="log", xlabel="timestep t", ylabel="held-out eps-MSE (log)")
    ex.set_title("held-out eps-MSE at the end", fontsize=10)
    ax.legend(fontsize=8)
    ex.legend(fontsize=8)

    write_png(fig, out / "diagnose.png")
    atomic_write_bytes(out / "diagnose.md", ("\n".join(lines) + "\n").encode())


def _parser():
    p = make_parser("bench.studies.diagnose", __doc__)
    p.add_argument("--dataset", default="mnist", choices=["mnist"], help="training data")
    p.add_argument(
        "--candidates",
        nargs="+",
        default=list(CANDIDATES),
        choices=list(CANDIDATES),
        help="which candidates to train, in order (default: all)",
    )
    p.add_argument("--minutes", type=float, default=15.0, help="training minutes per candidate")
    p.add_argument("--samples", type=int, default=1000, help="samples per FID")
    p.add_argument("--out", default="results/diagnose-mnist", help="output folder")
    p.add_argument("--cache-dir", default=".cache", help="artifact cache (extractor, floor)")
    return p


def main(argv: list[str] | None = None) -> int:
    """The command line (module docstring); 0 on success, 2 on bad arguments."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = _parser()
    a = p.parse_args(argv)
    if a.minutes <= 0 or a.samples < 2:
        p.error(f"--minutes must be > 0 and --samples >= 2, got {a.minutes}, {a.samples}")
    out = Path(a.out)
    cache = ArtifactCache(a.cache_dir)
    try:
        setup = _setup(a.dataset, cache, a.samples)
        floor = fid_floor(a.dataset, get_extractor("cnn", a.dataset, cache), cache)
    except DatasetError as e:
        p.error(str(e))
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in a.candidates:
        path = out / f"{name}.json"
        if not path.exists():  # resume: a finished candidate is not trained again
            res, imgs = run_candidate(CANDIDATES[name], setup, a.minutes * 60)
            save_grid(imgs[:64], out / f"{name}_samples.png", nrow=8)
            atomic_write_bytes(path, json.dumps(res, indent=1).encode())
        results.append(json.loads(path.read_text()))
    _write(results, floor, out)
    print((out / "diagnose.md").read_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
