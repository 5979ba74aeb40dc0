"""What the adapter tests (test_dit, test_pixart) share: a model moved off its initialisation,
and a cached executor's FLOP meter checked against FlopCounterMode over a run's calls."""

from __future__ import annotations

import pytest
import torch

from adaptive.policies import make_policy
from blockloop.executor import EarlyExitDenoiser
from blockloop.flops import flop_counter
from caching import make_cache

T = 1000


def jittered(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every weight moved a little (seeded): diffusers' adaLN-Zero gates and
    small output layers start near zero, so a comparison would compare next to nothing."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def check_flop_meter(model, policy: str, knob, cache: str | None, x, t, cond, **options) -> None:
    """The executor's executed FLOPs over three calls of a run equal FlopCounterMode's count
    (within 2%), and fall below the full model exactly when something skips. ``options``: the
    cache's."""
    knob_c = 0.5 if cache in ("teacache", "teacache-batch") else None
    cp = None if cache is None else make_cache(cache, knob_c, **options)
    ex = EarlyExitDenoiser(model, make_policy(policy, knob), T, cache=cp)
    measured = []
    for step in range(3):  # a sampling run's calls: the cache reuses on the later ones
        with torch.inference_mode(), flop_counter() as fc:
            ex(x, t * (1 - step / 3), cond)
        measured.append(fc.get_total_flops())
    assert ex.executed_flops == pytest.approx(sum(measured), rel=0.02)
    assert ex.flop_ratio < 1.0 if (knob is not None or cache) else ex.flop_ratio == 1.0
