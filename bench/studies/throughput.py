"""Executor throughput at paper size: wall-clock ratio vs FLOP ratio of `uem` exits.

``python -m bench.studies.throughput --model uvit-s2 --dataset cifar10 --batch 256 --device cuda``
builds U-ViT-S/2 with UEM heads (random weights, or ``--official PATH`` for an AdaDiff /
U-ViT checkpoint), draws one batch of noisy inputs with timesteps spread over [0, T), and for
each target FLOP ratio bisects the UEM threshold on that batch, then times one denoiser call
through the early-exit executor against the plain forward (median of interleaved repeats after a
warm-up; CUDA is synchronised around every timed call). With random weights the *pattern* of
exits is arbitrary but the cost of running, compacting and reading out is the real one, which
is what this measures. Only the dataset's geometry is used (no data is read).

Output: a markdown table on stdout and ``results/throughput/<model>-<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from adaptive.calibrate import check_target, search_knob
from adaptive.policies import make_policy
from bench.cache import atomic_write_bytes
from bench.cli import make_parser
from bench.data import DATASETS, dataset_info
from bench.devices import AUTOCAST, resolve_device
from bench.devices import autocast as amp_context
from bench.measure import wall_table
from blockloop.executor import EarlyExitDenoiser
from models import MODELS, make_model

__all__ = ["ThroughputSpec", "main", "measure_throughput", "uem_executors"]

log = logging.getLogger(__name__)


def _model(model_name: str, info, official: str | None, num_heads: int | None, seed: int):
    """U-ViT with UEM heads: an official checkpoint's weights, or random ones."""
    if official is not None:
        from models.official import load_official

        heads = num_heads or MODELS[model_name]["num_heads"]
        model, _ = load_official(official, heads, info.img_size, exit_heads="uem")
        return model
    torch.manual_seed(seed)
    return make_model(model_name, info.img_size, info.channels, exit_heads="uem")


@dataclass(frozen=True)
class ThroughputSpec:
    """One throughput measurement: ``model_name`` with UEM heads (random weights seeded by
    ``seed``, or the ``official`` checkpoint with ``num_heads`` heads), one batch of ``batch``
    noisy inputs of ``dataset``'s geometry at timesteps spread over [0, ``T``), timed
    ``repeats`` times on ``device`` under ``autocast`` for each target FLOP ratio of
    ``targets``."""

    model_name: str = "uvit-s2"
    dataset: str = "cifar10"
    batch: int = 256
    targets: tuple[float, ...] = (0.9, 0.75, 0.6, 0.45)
    device: str = "cpu"
    autocast: str = "none"
    repeats: int = 10
    official: str | None = None
    num_heads: int | None = None
    T: int = 1000
    seed: int = 0
    geometry: tuple[int, int] | None = None  # (img_size, channels) instead of the dataset's
    policy: str = "uem"  # or "uem-official" (one exit decision per batch, AdaDiff's evaluation)


@torch.inference_mode()
def measure_throughput(spec: ThroughputSpec = ThroughputSpec()) -> list[dict]:
    """Rows of :func:`bench.measure.wall_table` for the never-exiting executor and `uem` at
    each of ``spec.targets`` (the threshold searched by :func:`adaptive.calibrate.search_knob`
    on this one batched call), with the environment. A target outside (0, 1] is a
    ValueError, raised before any work."""
    for target in spec.targets:
        check_target(target)
    dev = resolve_device(spec.device)
    info = dataset_info(spec.dataset)
    if spec.geometry is not None:  # e.g. ImageNet-256 latents (32x32x4): no data set needed
        info = replace(info, img_size=spec.geometry[0], channels=spec.geometry[1])
    model = _model(spec.model_name, info, spec.official, spec.num_heads, spec.seed).to(dev).eval()
    g = torch.Generator().manual_seed(spec.seed)
    shape = (spec.batch, info.channels, info.img_size, info.img_size)
    x = torch.randn(*shape, generator=g).to(dev)
    t = torch.linspace(0, spec.T - 1, spec.batch).to(dev)
    never = EarlyExitDenoiser(model, make_policy("full"), spec.T)
    with amp_context(dev, AUTOCAST[spec.autocast]):
        executors = uem_executors(never, x, t, spec.targets, spec.policy)
        rows = wall_table(model, executors, x, t, spec.repeats)
    env = {
        "model": spec.model_name,
        "params": sum(p.numel() for p in model.parameters()),
        "batch": spec.batch,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor(),
        "autocast": spec.autocast,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    return [{**env, **r} for r in rows]


def uem_executors(
    never: EarlyExitDenoiser,
    x: Tensor,
    t: Tensor,
    targets: tuple[float, ...],
    policy: str = "uem",
) -> dict[str, EarlyExitDenoiser]:
    """``never`` (the never-exiting executor) and, per target FLOP ratio of ``targets`` in
    order, the ``policy`` executor (`uem`, or `uem-official`: AdaDiff's batch-mean rule) whose
    threshold the calibrator's bisection finds on the batch ``(x, t)``; keyed by the names the
    table shows."""
    executors = {"never-exit": never}
    for target in targets:

        def run(tau: float | None) -> tuple[float, float]:
            ex = never.with_policy(make_policy(policy, tau))
            ex(x, t)
            return ex.flop_ratio, ex.layer_ratio

        tau = search_knob(policy, target, run, never.model.depth, iters=20, tol=0.0).knob
        executors[f"{policy} tau={tau:.4f}"] = never.with_policy(make_policy(policy, tau))
    return executors


def _flop_ratio(text: str) -> float:
    """argparse type of a target FLOP ratio (checked by the calibrator's own rule)."""
    try:
        return check_target(float(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"--targets must be FLOP ratios in (0, 1], got {text}"
        ) from e


def _markdown(rows: list[dict]) -> str:
    r0 = rows[0]
    lines = [
        f"{r0['model']} ({r0['params']:,} params), batch {r0['batch']}, {r0['device']}, "
        f"autocast {r0['autocast']}, plain forward {r0['plain_ms_per_call']:.2f} ms",
        "| executor | FLOP ratio | layer ratio | wall ratio | ms/call | images/s |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['executor']} | {r['flop_ratio']:.3f} | {r['layer_ratio']:.3f} | "
        f"{r['wall_ratio']:.3f} | {r['ms_per_call']:.2f} | {r['images_per_s']:.0f} |"
        for r in rows
    ]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    """The command line of ``python -m bench.studies.throughput``."""
    p = make_parser("bench.studies.throughput", __doc__)
    p.add_argument("--model", default="uvit-s2", choices=MODELS, help="model size")
    p.add_argument(
        "--dataset",
        default="cifar10",
        choices=list(DATASETS),
        help="image geometry only (no data is read)",
    )
    p.add_argument("--batch", type=int, default=256, help="images per denoiser call")
    p.add_argument(
        "--targets",
        type=_flop_ratio,
        nargs="+",
        default=[0.9, 0.75, 0.6, 0.45],
        help="FLOP ratios in (0, 1] to search the uem threshold for",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument(
        "--autocast", default="none", choices=list(AUTOCAST), help="mixed precision (GPU)"
    )
    p.add_argument("--repeats", type=int, default=10, help="interleaved timed repeats")
    p.add_argument(
        "--official",
        default=None,
        help="an official U-ViT/AdaDiff checkpoint (default: random weights)",
    )
    p.add_argument(
        "--num-heads",
        type=int,
        default=None,
        help="heads of --official's model (default: the model size's)",
    )
    p.add_argument("--out", type=Path, default=Path("results/throughput"), help="output folder")
    return p


def _json_path(a: argparse.Namespace) -> Path:
    """``<out>/<model>-<cpu|cuda>-<autocast>.json``: the device family the run asked for."""
    dev = (
        "cuda"
        if "cuda" in str(a.device) or (a.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    return a.out / f"{a.model}-{dev}-{a.autocast}.json"


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.studies.throughput``: measure, print the table, write it as JSON."""
    p = _parser()
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.batch < 1 or a.repeats < 1:
        p.error("--batch and --repeats must be >= 1")
    spec = ThroughputSpec(
        a.model,
        a.dataset,
        a.batch,
        tuple(a.targets),
        a.device,
        a.autocast,
        a.repeats,
        a.official,
        a.num_heads,
    )
    try:
        rows = measure_throughput(spec)
    except ValueError as e:
        p.error(str(e))
    print(_markdown(rows))
    path = _json_path(a)
    atomic_write_bytes(path, json.dumps(rows, indent=2).encode())
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
