"""A new step-level cache: reuse the middle block's attention and MLP branches between calls.

``CachePolicy`` (blockloop/contracts.py) is the contract; ``bench.plugins.register("cache",
cls)`` makes its name valid for the executor, calibration, ``make_cache`` and the ``cache``
field of a cell, in this process (``--plugin MODULE`` on the command line: every process). A
cache that needs an optional model capability names it in ``requires`` (here the block
parts), so a model without it is refused with one line.

Runs in seconds on an untrained ``micro`` model: ``python docs/examples/cache_policy.py``.
"""

import torch

import samplers
from adaptive.calibrate import CalibrationRun, calibrate
from adaptive.policies import make_policy
from bench.cell import Cell
from bench.plugins import register
from blockloop.contracts import CachePolicy
from blockloop.executor import EarlyExitDenoiser
from caching import CacheSpec, make_cache
from models import UViTState, make_model


class MidBlockCache(CachePolicy):
    """Every ``interval``-th denoiser call computes the mid block; the calls between reuse its
    attention and MLP branches from the last computed call (a one-block FORA)."""

    name = "midcache"
    knob_name = "interval"  # the one knob the calibrator bisects
    knob_range = (1.0, 100.0)
    knob_default = 2.0
    # knob_direction = -1 (the default): a larger interval reuses more, fewer FLOPs.
    # per_row = False (the default): it does not compose with exit policies.

    def plan(self, state: UViTState) -> None:
        """Once per call, after embedding; ``self.call`` counts calls of this sampling run."""
        self._full = self.call % max(1, round(self.knob)) == 0

    def run_block(self, i: int, state: UViTState) -> float:
        """Run (or reuse) block ``i`` in place on ``state``; return the FLOPs executed."""
        rows, c = state.h.shape[0], self.costs
        if i != self.model.depth // 2:
            self.model.run_block(i, state)
            return self._account(i, rows, c.blocks[i] * rows)
        reuse = not self._full
        attn, mlp = self.model.block_parts(
            i, state, self.store["attn"] if reuse else None, self.store["mlp"] if reuse else None
        )
        self.store["attn"], self.store["mlp"] = attn, mlp  # per-run state: reset() clears it
        self._held()  # track the memory the cache holds
        executed = c.fuse[i] + (0 if reuse else c.attn[i] + c.mlp[i])
        return self._account(i, rows, executed * rows)  # reused FLOPs count as saved


register("cache", MidBlockCache)  # executor, calibration, make_cache, cells


def main() -> None:
    torch.manual_seed(0)
    model = make_model("micro", 8, 1).eval()  # untrained: a smoke run
    schedule = samplers.make_schedule("cosine", 1000)

    # 1. In the block loop: the cache wraps the model inside the executor (policy "full").
    ex = EarlyExitDenoiser(model, make_policy("full"), schedule.T, cache=make_cache("midcache", 2))
    gen = torch.Generator().manual_seed(0)
    out = samplers.sample("ddim", ex, schedule, (16, 1, 8, 8), 6, generator=gen)
    print(f"interval 2: NFE {out.nfe}, FLOP ratio {ex.flop_ratio:.3f}")
    print(f"reused {ex.cache.reuse_ratio:.3f} of block FLOPs, held {ex.cache.peak_bytes} bytes")

    # 2. Its knob calibrated to a FLOP ratio, as a cell's target_flop_ratio does for a cache.
    run = CalibrationRun(sampler="ddim", steps=6, n=16)
    cal = calibrate(model, schedule, "full", 0.9, cache=CacheSpec("midcache"), run=run)
    print(f"calibrated interval={cal.knob:.3g} -> FLOP ratio {cal.achieved:.3f} (target 0.9)")

    # 3. A cell may name it now.
    cell = Cell(model="micro", cache="midcache", target_flop_ratio=0.9)
    print("cell:", cell.label())


if __name__ == "__main__":
    main()
