"""A new exit policy: exit once the readout stops changing, relative to its size.

``ExitPolicy`` (blockloop/contracts.py) is the contract; ``bench.plugins.register("policy",
cls)`` makes its name valid everywhere a policy is named (cells, sweep files, calibration) in
this process. For the command line and its worker processes, put the class and the
``register`` call in an importable module and name it: ``python -m bench.grid --plugin
my_module`` (or install it under the ``diffcompress.plugins`` entry point; see
``examples/plugin/``).

Runs in seconds on an untrained ``micro`` model: ``python docs/examples/exit_policy.py``.
"""

import torch

import samplers
from adaptive.calibrate import CalibrationRun, calibrate
from adaptive.policies import make_policy
from bench.cell import Cell
from bench.plugins import register
from blockloop.contracts import ExitContext, ExitPolicy
from blockloop.executor import EarlyExitDenoiser
from models import make_model


class RelativeChange(ExitPolicy):
    """Exit a sample when ||eps_i - eps_{i-1}|| / ||eps_{i-1}|| < ``rel`` (the readouts after
    two consecutive blocks). Like PABEE, but relative and without patience."""

    name = "relchange"  # the registry name: what cells and sweep files write
    knob_name = "rel"  # the one knob the calibrator bisects ...
    knob_range = (0.0, 10.0)  # ... in this range
    knob_default = 0.1
    knob_direction = -1  # a larger knob exits earlier: fewer FLOPs
    recipe = "layerwise"  # the training recipe it runs on: trained early readouts
    revision = 0  # bump when the rule's meaning changes (records get new keys)

    def decide(self, ctx: ExitContext) -> tuple[torch.Tensor, torch.Tensor]:
        eps = ctx.readout().flatten(1)  # the readout at this block; its FLOPs are counted
        prev = ctx.memory.get("prev")  # per-row state lives in ctx.memory (compacted)
        ctx.memory["prev"] = eps
        if prev is None:  # the first block has nothing to compare with
            change = torch.full((eps.shape[0],), float("inf"), device=eps.device)
        else:
            change = (eps - prev).norm(dim=1) / prev.norm(dim=1).clamp_min(1e-12)
        return change < self.knob, change  # (exit mask, score recorded in the trace)


register("policy", RelativeChange)  # its `name` is the key; a taken name is refused


def main() -> None:
    torch.manual_seed(0)
    model = make_model("micro", 8, 1, exit_heads="none").eval()  # untrained: a smoke run
    schedule = samplers.make_schedule("cosine", 1000)

    # 1. In the block loop, with a fixed knob.
    ex = EarlyExitDenoiser(model, make_policy("relchange", 0.5), schedule.T)
    gen = torch.Generator().manual_seed(0)
    out = samplers.sample("ddim", ex, schedule, (16, 1, 8, 8), 5, generator=gen)
    print(f"rel=0.5: NFE {out.nfe}, FLOP ratio {ex.flop_ratio:.2f}, layers {ex.layer_ratio:.2f}")

    # 2. Calibrated to a FLOP ratio, as a cell's target_flop_ratio does.
    run = CalibrationRun(sampler="ddim", steps=5, n=16)
    cal = calibrate(model, schedule, "relchange", 0.5, run=run)
    print(f"calibrated rel={cal.knob:.3g} -> FLOP ratio {cal.achieved:.2f} (target 0.5)")

    # 3. A cell (or a sweep file read in this process) may now name it.
    cell = Cell(model="micro", recipe="layerwise", policy="relchange", target_flop_ratio=0.5)
    print("cell:", cell.label())


if __name__ == "__main__":
    main()
