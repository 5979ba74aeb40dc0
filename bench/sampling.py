"""Batched generation with any sampler, and image grids."""

from __future__ import annotations

import inspect
import io
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

import samplers
from bench.cache import atomic_write_bytes
from samplers import Denoiser, VPSchedule

__all__ = [
    "GRID_PADDING",
    "GRID_SCALE",
    "GenerateOptions",
    "generate",
    "image_sampler_options",
    "save_grid",
]


def image_sampler_options(sampler: str) -> dict[str, float]:
    """Options every sampler gets on image data in [-1, 1]: the x0 estimate is clipped to that
    range (Ho et al. 2020's ``clip_denoised``; it matters at the first steps, where alpha_t is
    tiny) by every sampler that has an x0 step to clip, i.e. takes ``clip_denoised``
    (DPM-Solver's noise-prediction form does not)."""
    params = inspect.signature(samplers.get_sampler(sampler)).parameters
    return {"clip_denoised": 1.0} if "clip_denoised" in params else {}


@dataclass(frozen=True, eq=False)
class GenerateOptions:
    """How :func:`generate` runs, apart from the sampler: ``batch_size`` samples per sampler
    call, the ``seed`` of the noise, the samples' conditions ``cond`` (one row per sample, or
    None), the ``device``, a progress bar, and ``timings``, a list the wall-clock seconds of
    each batch are appended to (None: not timed)."""

    batch_size: int = 500
    seed: int = 0
    cond: Tensor | None = None
    device: torch.device | str = "cpu"
    progress: bool = False
    timings: list[float] | None = None


_GENERATE_OPTIONS = frozenset(f.name for f in fields(GenerateOptions))


@torch.inference_mode()
def generate(
    denoiser: Denoiser,
    schedule: VPSchedule,
    sampler: str,
    steps: int,
    n: int,
    shape: tuple[int, ...],
    **options: Any,
) -> tuple[Tensor, int]:
    """``n`` samples of ``shape`` (C, H, W); returns (images on the CPU, NFE per batch).

    ``options``: the fields of :class:`GenerateOptions` (``batch_size``, ``seed``, ``cond``,
    ``device``, ``progress``, ``timings``); every other keyword is a sampler option, and
    these override :func:`image_sampler_options`. Noise for sample ``j`` depends only on
    ``seed`` and ``j // batch_size``, so runs with the same seed and batch size are
    reproducible. If ``timings`` is a list, the wall-clock seconds of each batch are appended
    to it (CUDA work is synchronised before the clock is read).
    """
    run = GenerateOptions(**{k: v for k, v in options.items() if k in _GENERATE_OPTIONS})
    sampler_kw = {k: v for k, v in options.items() if k not in _GENERATE_OPTIONS}
    fn = samplers.get_sampler(sampler)
    sampler_kw = {**image_sampler_options(sampler), **sampler_kw}
    out, nfe = [], 0
    starts = range(0, n, run.batch_size)
    for b, start in enumerate(tqdm(starts, desc=f"{sampler}-{steps}", disable=not run.progress)):
        m = min(run.batch_size, n - start)
        t0 = time.perf_counter()
        gen = torch.Generator(device=run.device).manual_seed(run.seed * 100_003 + b)
        c = run.cond[start : start + m].to(run.device) if run.cond is not None else None
        res = fn(denoiser, schedule, (m, *shape), steps, generator=gen, cond=c, **sampler_kw)
        out.append(res.samples.float().cpu())  # .cpu() waits for the device's work
        if run.timings is not None:
            run.timings.append(time.perf_counter() - t0)
        nfe = res.nfe
    return torch.cat(out), nfe


GRID_PADDING = 1  # white pixels between the images of a saved grid (before upscaling)
GRID_SCALE = 4  # saved grids are upscaled this many times (nearest neighbour)


def save_grid(images: Tensor, path: str | Path, nrow: int = 16, scale: int = GRID_SCALE) -> Path:
    """Write images in [-1, 1] as one PNG grid (atomically), upscaled ``scale``x for viewing."""
    from PIL import Image
    from torchvision.utils import make_grid

    grid = make_grid(
        images.clamp(-1, 1).add(1).div(2), nrow=nrow, padding=GRID_PADDING, pad_value=1.0
    )
    arr = (grid.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    img = Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path
