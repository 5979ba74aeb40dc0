"""A new model size: a deeper, narrower U-ViT, registered by name.

The grid's cells train U-ViTs (models/uvit.py); a size is a dict of its config fields,
registered with ``bench.plugins.register("model", fields, name)``, which makes its name valid
for training, cells and sweep files (``--plugin MODULE`` on the command line). An entry in
``bench.train.BUDGETS`` sets how long it trains (otherwise the defaults).

A backbone of another architecture keeps the layer-wise model contract (``blockloop/model.py``)
and runs under the executor, the FLOP meter, calibration and the caches it has the
capabilities for: ``models.dit.DiTAdapter`` does so for a diffusers DiT.

Runs in seconds: ``python docs/examples/model.py`` (trains 2 steps into a temporary cache).
"""

import tempfile

import torch

import samplers
from adaptive.policies import make_policy
from bench.cache import ArtifactCache
from bench.cell import Cell, cell_train_config
from bench.plugins import register
from bench.train import BUDGETS, Budget, load_or_train
from blockloop.executor import EarlyExitDenoiser

# 7 blocks (3 in, mid, 3 out) of width 32 with 2 heads, 2x2 patches; geometry (image size,
# channels, classes) comes from the data set.
register("model", dict(patch_size=2, embed_dim=32, depth=7, num_heads=2), "micro-deep")
BUDGETS["micro-deep"] = Budget(steps=2, finetune_steps=1, prune_finetune_steps=1)


def main() -> None:
    cell = Cell(model="micro-deep", policy="static", knob=3, sampler="ddim", steps=5)
    print("cell:", cell.label())
    with tempfile.TemporaryDirectory() as tmp:
        # What a cell's pipeline does first: train (or load) the model its fields describe.
        tm = load_or_train(cell_train_config(cell), ArtifactCache(tmp, shipped=()), progress=False)
        print(f"{tm.config.model}: {sum(p.numel() for p in tm.model.parameters())} parameters")
        # Exit after block 3 of 7 (0-based), in the block loop.
        ex = EarlyExitDenoiser(tm.model, make_policy("static", 3), tm.schedule.T)
        gen = torch.Generator().manual_seed(0)
        out = samplers.sample("ddim", ex, tm.schedule, (8, 1, 8, 8), 5, generator=gen)
        print(f"static exit: NFE {out.nfe}, FLOP ratio {ex.flop_ratio:.2f}")


if __name__ == "__main__":
    main()
