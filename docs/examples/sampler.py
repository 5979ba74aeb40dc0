"""A new sampler: Heun's second-order method on the probability-flow ODE, in DDIM's variables.

A sampler is a function with the suite's one signature (samplers/base.py):
``sampler(denoiser, schedule, x, steps, *, generator, cond, callback, ...) -> SamplerOutput``,
spending at most ``steps`` denoiser calls. Registering it in ``samplers.SAMPLERS`` makes its
name valid for ``samplers.sample``, calibration and cells (``bench.plugins.register``: in this
process; ``--plugin MODULE`` on the command line).

Runs in seconds on an untrained ``micro`` model: ``python docs/examples/sampler.py``.
"""

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor

import samplers
from bench.cell import Cell
from bench.plugins import register
from models import make_model
from samplers.base import Callback, Denoiser, Eval, SamplerOutput, clip, initial_noise
from samplers.grid import time_grid


def heun(
    denoiser: Denoiser,
    schedule: samplers.VPSchedule,
    x: Tensor | Sequence[int],
    steps: int,
    *,
    generator: torch.Generator | None = None,
    cond: Tensor | None = None,
    callback: Callback | None = None,
    clip_denoised: float | None = None,
    spacing: str = "trailing",  # the time grid (samplers/grid.py); the defaults are read
    end: str = "zero",  # from this signature by samplers.defaults and --list
) -> SamplerOutput:
    """Heun (EDM's Algorithm 1, deterministic) in x / alpha against sigma / alpha, where the
    ODE's slope is eps. Each interval costs two calls but the last (an Euler step, as EDM's
    step to clean data), so ``steps`` calls walk ``(steps + 1) // 2`` intervals."""
    xt = initial_noise(schedule, x, steps, generator, cond)  # checks steps, draws x_T
    grid = time_grid(schedule, (steps + 1) // 2, spacing, end)
    model = Eval(denoiser, cond, callback)  # counts NFE, checks shapes, calls the callback

    def ddim_step(s, t, eps):  # one Euler step of the ODE = one DDIM step
        x0 = clip((xt - s.sigma * eps) / s.alpha, clip_denoised)
        return t.alpha * x0 + t.sigma * eps, x0

    for i, (s, t) in enumerate(itertools.pairwise(grid)):
        eps = model(xt, s.model_t)
        x_next, x0 = ddim_step(s, t, eps)
        if i < len(grid) - 2:  # the correction: the slope averaged over both ends
            eps = (eps + model(x_next, t.model_t)) / 2
            x_next, x0 = ddim_step(s, t, eps)
        xt = x_next
        model.step_done(i, s.model_t, xt, x0)
    return SamplerOutput(xt, model.nfe)


register("sampler", heun, "heun")


def main() -> None:
    torch.manual_seed(0)
    model = make_model("micro", 8, 1).eval()  # untrained: a smoke run
    schedule = samplers.make_schedule("cosine", 1000)
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        out = samplers.sample("heun", model, schedule, (8, 1, 8, 8), 9, generator=gen)
    print(f"heun: {out.nfe} NFE for 9 steps, samples {tuple(out.samples.shape)}")
    print("defaults:", samplers.defaults("heun"))
    samplers.check_options("heun", 9, spacing="leading")  # what a cell checks when it is read
    print("cell:", Cell(model="micro", sampler="heun", steps=9, spacing="leading").label())


if __name__ == "__main__":
    main()
