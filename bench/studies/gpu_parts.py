"""The parts of the GPU suite (:mod:`bench.studies.gpu_suite`): each is called as
``part(plan, clock, cache) -> rows`` and stops starting new measurements once ``clock`` has
expired (the rows it did not reach say ``skipped``)."""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
import torch.nn.functional as F

import samplers
from adaptive.policies import make_policy
from bench.cache import ArtifactCache
from bench.devices import AUTOCAST, resolve_device
from bench.devices import autocast as amp_context
from bench.measure import interleaved_medians
from blockloop.cost import CostModel
from blockloop.executor import EarlyExitDenoiser
from caching import make_cache
from models import make_model

__all__ = ["PART_FUNCTIONS"]

SKIPPED = "time box"


def _inputs(size: tuple[str, int, int], batch: int, dev) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    _, img, ch = size
    x = torch.randn(batch, ch, img, img, generator=g).to(dev)
    return x, torch.linspace(0, 999, batch).to(dev)


def _model(size: tuple[str, int, int], dev, heads: str = "uem") -> torch.nn.Module:
    torch.manual_seed(0)
    name, img, ch = size
    return make_model(name, img, ch, exit_heads=heads).to(dev).eval()


def _amp(plan):
    return amp_context(resolve_device(plan.device), AUTOCAST[plan.autocast])


def throughput(plan, clock, cache: ArtifactCache) -> list[dict]:
    """The plain forward and the `uem` executor at each target, per size and batch, with the
    peak memory of the measurement."""
    from bench.studies.throughput import measure_throughput

    rows: list[dict[str, Any]] = []
    dev = resolve_device(plan.device)
    for size in plan.sizes:
        for batch in plan.batches:
            if clock.expired:
                rows.append({"model": size[0], "batch": batch, "skipped": SKIPPED})
                continue
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            got = measure_throughput(plan.spec(size, batch))
            if batch == min(plan.batches):  # the official evaluation: batch-mean exits
                got += measure_throughput(plan.spec(size, batch, policy="uem-official"))[1:]
            peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
            rows += [{**r, "peak_mb": peak} for r in got]
    return rows


def compiled(plan, clock, cache: ArtifactCache) -> list[dict]:
    """Images/s of the plain forward eager and under ``torch.compile``, and the `uem` executor
    at 0.65 against both, at the largest batch."""
    rows: list[dict[str, Any]] = []
    for size in plan.sizes:
        if clock.expired:
            rows.append({"model": size[0], "skipped": SKIPPED})
            continue
        rows.append(_compiled_row(plan, size))
    return rows


@torch.inference_mode()
def _compiled_row(plan, size: tuple[str, int, int]) -> dict[str, Any]:
    from bench.studies.throughput import uem_executors

    dev, batch = resolve_device(plan.device), max(plan.batches)
    model = _model(size, dev)
    x, t = _inputs(size, batch, dev)
    with _amp(plan):
        fast = torch.compile(model, backend=plan.compile_backend)
        never = EarlyExitDenoiser(model, make_policy("full"), 1000)
        ex = uem_executors(never, x, t, (0.65,))
        uem = next(e for k, e in ex.items() if k != "never-exit")
        calls = {"eager": lambda: model(x, t), "compiled": lambda: fast(x, t)}
        calls["uem@0.65"] = lambda: uem(x, t)
        sec = interleaved_medians(calls, plan.repeats)
    return {
        "model": size[0],
        "batch": batch,
        "eager img/s": batch / sec["eager"],
        "compiled img/s": batch / sec["compiled"],
        "uem FLOP ratio": uem.flop_ratio,
        "uem wall vs eager": sec["uem@0.65"] / sec["eager"],
        "uem wall vs compiled": sec["uem@0.65"] / sec["compiled"],
    }


@torch.inference_mode()
def caches(plan, clock, cache: ArtifactCache) -> list[dict]:
    """One DDIM sampling run of a batch through the executor with no cache, TaylorSeer and
    FORA (interval 2), on the first size: FLOP and wall ratios against no cache."""
    dev, size, batch = resolve_device(plan.device), plan.sizes[0], max(plan.batches)
    model, schedule = _model(size, dev, "none"), samplers.make_schedule("linear")
    shape = (batch, size[2], size[1], size[1])
    runs = {"none": None, "taylorseer": ("taylorseer", 2.0), "fora": ("fora", 2.0)}
    executors = {
        k: EarlyExitDenoiser(model, make_policy("full"), 1000, cache=v and make_cache(*v))
        for k, v in runs.items()
    }

    def sample(ex):
        gen = torch.Generator(device=dev).manual_seed(0)
        return lambda: samplers.sample(
            "ddim", ex, schedule, shape, plan.sampling_steps, generator=gen
        )

    with _amp(plan):
        sec = interleaved_medians({k: sample(e) for k, e in executors.items()}, 2)
    return [
        {
            "cache": k,
            "model": size[0],
            "batch": batch,
            "FLOP ratio": executors[k].flop_ratio,
            "wall ratio": sec[k] / sec["none"],
        }
        for k in runs
    ]


def train(plan, clock, cache: ArtifactCache) -> list[dict]:
    """Seconds per training step (AdamW, the eps loss, autocast) at the plan's batch."""
    dev, size = resolve_device(plan.device), plan.sizes[0]
    model = _model(size, dev, "none").train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, t = _inputs(size, plan.train_batch, dev)
    eps = torch.randn_like(x)
    times = []
    for k in range(3 + plan.repeats // 2):
        t0 = time.perf_counter()
        with _amp(plan):
            loss = F.mse_loss(model(x, t).float(), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if k >= 2:  # after warm-up
            times.append(time.perf_counter() - t0)
    med = sorted(times)[len(times) // 2]
    return [{"model": size[0], "batch": plan.train_batch, "s/step": med}]


def prune(plan, clock, cache: ArtifactCache) -> list[dict]:
    """30% magnitude pruning of the first size on the device; images/s against unpruned.
    (Not under inference mode: torch-pruning traces its dependency graph through autograd.)"""
    from pruning import prune as prune_model

    dev, size, batch = resolve_device(plan.device), plan.sizes[0], max(plan.batches)
    full = _model(size, dev, "none")
    small = copy.deepcopy(full)
    prune_model(small, 0.3, "magnitude")
    x, t = _inputs(size, batch, dev)
    with _amp(plan), torch.inference_mode():
        sec = interleaved_medians(
            {"full": lambda: full(x, t), "pruned": lambda: small(x, t)}, plan.repeats
        )
    flops = CostModel(small, 1000).full / CostModel(full, 1000).full
    return [
        {
            "model": size[0],
            "batch": batch,
            "FLOP ratio": flops,
            "wall ratio": sec["pruned"] / sec["full"],
            "pruned img/s": batch / sec["pruned"],
        }
    ]


def cell(plan, clock, cache: ArtifactCache) -> list[dict]:
    """One grid cell end to end on the device: its record's headline fields."""
    from bench.run import run_cell

    rec = run_cell(plan.cell, cache, device=resolve_device(plan.device))
    keep = ("label", "fid", "flop_ratio_per_call", "wall_ratio_per_call", "seconds_per_image")
    return [{k: rec.get(k) for k in keep}]


PART_FUNCTIONS = {
    "throughput": throughput,
    "compile": compiled,
    "caches": caches,
    "train": train,
    "prune": prune,
    "cell": cell,
}
