"""GPU evidence in one prepared run (issue 41): throughput of the executor, compiled and eager
plain models, caches, a training step, pruning and one grid cell, each part time-boxed.

``python -m bench.studies.gpu_suite --out results/gpu`` on a CUDA machine (bf16 autocast)
measures, part by part (:data:`PARTS`), and rewrites ``results.json`` and ``results.md`` in
``--out`` after every part, so a run cut short keeps what it measured:

- ``throughput``: U-ViT-S/2 at CIFAR-10 geometry and U-ViT-L/2 at ImageNet-256 latent geometry
  (32x32x4), random weights with UEM heads, batch 1 / 64 / 256: the plain forward and the `uem`
  executor at FLOP ratios 0.8 / 0.65 / 0.5 (thresholds bisected on the batch), side by side
  (:func:`bench.studies.throughput.measure_throughput`), at batch 1 also `uem-official` (the
  official evaluation's one decision per batch), peak memory;
- ``compile``: the plain forward eager and under ``torch.compile``, and the `uem` executor at
  0.65 against both;
- ``caches``: a DDIM-20 sampling run of one batch through the executor with no cache, TaylorSeer
  and FORA (interval 2): FLOP ratio and wall ratio;
- ``train``: seconds per training step (AdamW, the eps loss) at batch 512;
- ``prune``: 30% magnitude pruning of U-ViT-S/2 on the device and its images/s against the
  unpruned model;
- ``cell``: one grid cell end to end on the device (the shipped digits `uem` model, `uem` exits
  at 0.65, bf16): its record's FID, FLOP ratio and wall ratio.

A part stops starting new measurements once it has run ``--part-minutes``; the rest of it is
recorded as skipped. ``--dry-run`` runs every part on the CPU with the `micro` size, batch 2
and a few samples in seconds (the test suite does), so the GPU run cannot fail on a typo;
``torch.compile`` then uses its ``eager`` backend (no code generation).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from bench.cache import ArtifactCache, atomic_write_bytes
from bench.cell import Cell
from bench.cli import make_parser
from bench.devices import resolve_device
from bench.studies.gpu_parts import PART_FUNCTIONS
from bench.studies.throughput import ThroughputSpec

__all__ = ["PARTS", "Plan", "main", "make_plan", "run_suite"]

log = logging.getLogger(__name__)

PARTS = ("throughput", "compile", "caches", "train", "prune", "cell")


@dataclass(frozen=True)
class Plan:
    """What the run measures: model sizes with their geometry ``(size, img_size, channels)``,
    batches, FLOP targets, timed repeats, the training batch, the grid cell, the device,
    autocast and each part's time box."""

    sizes: tuple[tuple[str, int, int], ...]
    batches: tuple[int, ...]
    targets: tuple[float, ...] = (0.8, 0.65, 0.5)
    repeats: int = 10
    train_batch: int = 512
    sampling_steps: int = 20
    cell: Cell = field(default_factory=Cell)
    device: str = "cuda"
    autocast: str = "bf16"
    part_seconds: float = 150.0
    compile_backend: str = "inductor"

    def spec(self, size: tuple[str, int, int], batch: int, **kw: Any) -> ThroughputSpec:
        """The throughput spec of ``size`` at ``batch`` on this plan's device."""
        name, img, ch = size
        return ThroughputSpec(
            name,
            batch=batch,
            targets=self.targets,
            device=self.device,
            autocast=self.autocast,
            repeats=self.repeats,
            geometry=(img, ch),
            **kw,
        )


def make_plan(dry_run: bool, device: str, part_minutes: float) -> Plan:
    """The GPU plan (paper sizes, bf16) or the CPU dry run (micro, float32, seconds)."""
    if dry_run:
        cell = Cell(model="micro", recipe="uem", policy="uem", target_flop_ratio=0.65)
        return Plan(
            sizes=(("micro", 8, 1),),
            batches=(2,),
            repeats=1,
            train_batch=4,
            sampling_steps=3,
            cell=replace(cell, samples=8, steps=3),
            device="cpu",
            autocast="none",
            part_seconds=part_minutes * 60,
            compile_backend="eager",
        )
    cell = Cell(
        recipe="uem",
        policy="uem",
        target_flop_ratio=0.65,
        device=device,
        autocast="bf16",
    )
    return Plan(
        sizes=(("uvit-s2", 32, 3), ("uvit-l2", 32, 4)),
        batches=(1, 64, 256),
        cell=cell,
        device=device,
        part_seconds=part_minutes * 60,
    )


class _Clock:
    """A part's time box: ``expired`` once it has run ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    @property
    def expired(self) -> bool:
        return time.monotonic() > self.end


def run_suite(plan: Plan, parts: tuple[str, ...], out: Path, cache: ArtifactCache) -> list[dict]:
    """Run ``parts`` in order; after each, write ``results.json`` and ``results.md`` to ``out``.
    A part that raises is recorded with its error and the next one runs."""
    results: list[dict[str, Any]] = []
    for name in parts:
        log.info("part %s", name)
        t0 = time.monotonic()
        fn: Callable[..., list[dict]] = PART_FUNCTIONS[name]
        try:
            rows = fn(plan, _Clock(plan.part_seconds), cache)
            record = {"part": name, "rows": rows}
        except Exception as e:  # one failed part must not cost the others
            log.exception("part %s failed", name)
            record = {"part": name, "error": f"{type(e).__name__}: {e}", "rows": []}
        record["seconds"] = time.monotonic() - t0
        results.append(record)
        _write(results, plan, out)
    return results


def _environment(plan: Plan) -> dict[str, Any]:
    dev = resolve_device(plan.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return {
        "device": name,
        "torch": torch.__version__,
        "autocast": plan.autocast,
        "date": time.strftime("%Y-%m-%d"),
    }


def _write(results: list[dict], plan: Plan, out: Path) -> None:
    env = _environment(plan)
    doc = {"environment": env, "parts": results}
    atomic_write_bytes(out / "results.json", json.dumps(doc, indent=1, default=str).encode())
    lines = [f"# GPU suite: {env['device']}, torch {env['torch']}, {env['date']}", ""]
    for rec in results:
        lines.append(f"## {rec['part']} ({rec['seconds']:.0f} s)")
        if "error" in rec:
            lines.append(f"error: {rec['error']}")
        rows = rec["rows"]
        if rows:
            keys = list(dict.fromkeys(k for r in rows for k in r))
            lines.append("| " + " | ".join(keys) + " |")
            lines.append("|" + "---|" * len(keys))
            lines += ["| " + " | ".join(_cell(r.get(k)) for k in keys) + " |" for r in rows]
        lines.append("")
    atomic_write_bytes(out / "results.md", "\n".join(lines).encode())


def _cell(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.studies.gpu_suite``: run the parts, print the markdown; 0 when every
    part ran without an error, 1 otherwise."""
    p = make_parser("bench.studies.gpu_suite", __doc__)
    p.add_argument("--out", type=Path, default=Path("results/gpu"), help="output folder")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS, help="which parts")
    p.add_argument("--dry-run", action="store_true", help="micro sizes on the CPU, seconds")
    p.add_argument("--device", default="auto", help="cuda, cuda:N or auto (GPU run)")
    p.add_argument("--part-minutes", type=float, default=2.5, help="time box of each part")
    p.add_argument("--cache-dir", default=None, help="artifact cache (default: <repo>/.cache)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.part_minutes <= 0:
        p.error(f"--part-minutes must be > 0, got {a.part_minutes}")
    device = resolve_device(a.device)
    if not a.dry_run and device.type != "cuda":
        p.error("the GPU suite needs a CUDA device (use --dry-run to check it on the CPU)")
    plan = make_plan(a.dry_run, str(device), a.part_minutes)  # "cuda" / "cuda:N", as cells take
    a.out.mkdir(parents=True, exist_ok=True)
    results = run_suite(plan, tuple(a.parts), a.out, ArtifactCache(a.cache_dir))
    print((a.out / "results.md").read_text(), end="")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
