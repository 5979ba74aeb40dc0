"""pytest-benchmark cases. Run ``pytest tests/test_benchmarks.py --benchmark-enable -s`` for
figures; in the normal suite they run once as smoke tests (timing is never asserted)."""

from __future__ import annotations

import pytest
import torch

import samplers
from samplers import make_schedule

STEPS, BATCH, SHAPE = 50, 256, (1, 8, 8)


def _zero_denoiser(x, t, cond):
    return torch.zeros_like(x)


@pytest.mark.parametrize("name", samplers.available())
def test_sampler_overhead(benchmark, name):
    """Cost of a sampler outside the denoiser: 50 steps, zero-cost denoiser, batch 256."""
    schedule = make_schedule("linear")
    noise = torch.randn(BATCH, *SHAPE, generator=torch.Generator().manual_seed(0))
    out = benchmark(samplers.sample, name, _zero_denoiser, schedule, noise, STEPS)
    assert out.nfe == STEPS and torch.isfinite(out.samples).all()
    if benchmark.stats is not None:  # only with --benchmark-enable
        per_step_us = benchmark.stats.stats.median / STEPS * 1e6
        print(f"\n{name}: {per_step_us:.1f} us per step outside the denoiser (batch {BATCH})")
