"""asv suite: sampling speed, memory and quality over the grid's axes.

Parameters are grid axes (exit policy at a calibrated FLOP target, sampler, steps). The
trained models come from the artifact cache (or the checkpoints shipped in
``models/checkpoints``), so nothing is trained while timing; quality figures run their cells
once per ``asv run`` in ``setup_cache`` and the ``track_`` benchmarks read them.

Run ``asv run`` (or ``asv run --quick`` for one repeat); ``asv publish`` + ``asv preview`` show
the history. Everything here is CPU-sized: the whole suite takes a few minutes on 2 cores.
"""

from __future__ import annotations

from adaptive.calibrate import calibrate
from adaptive.executor import EarlyExitDenoiser
from adaptive.policies import POLICIES, make_policy
from bench.grid import Cell, run_cell
from bench.sampling import IMAGE_SAMPLER_DEFAULTS, generate
from bench.train import TrainConfig, load_or_train

POLICY = ["full", "uem"]
SAMPLER = ["ddim", "dpm-solver++"]
STEPS = [10, 20]
PARAM_NAMES = ["policy", "sampler", "steps"]
TARGET = 0.65  # the FLOP ratio every exit policy is calibrated to
BATCH = 64  # images per timed sampling run
QUALITY_SAMPLES = 500


def _executor(policy: str, sampler: str, steps: int):
    """The calibrated executor and the schedule for one (policy, sampler, steps)."""
    tm = load_or_train(TrainConfig(recipe=POLICIES[policy].recipe), progress=False)
    knob = None
    if POLICIES[policy].knob_name is not None:
        knob = calibrate(
            tm.model,
            tm.schedule,
            policy,
            TARGET,
            sampler=sampler,
            steps=steps,
            sampler_kw=IMAGE_SAMPLER_DEFAULTS[sampler],
        ).knob
    return EarlyExitDenoiser(tm.model, make_policy(policy, knob), tm.schedule.T), tm.schedule


class Sampling:
    """Wall-clock and peak memory of sampling a batch of 64 digits (seconds for the batch:
    divide by 64 for seconds per image)."""

    params = (POLICY, SAMPLER, STEPS)
    param_names = PARAM_NAMES
    timeout = 600
    warmup_time = 0.5

    def setup(self, policy: str, sampler: str, steps: int) -> None:
        self.ex, self.schedule = _executor(policy, sampler, steps)
        self.run = lambda: generate(
            self.ex, self.schedule, sampler, steps, BATCH, (1, 8, 8), batch_size=BATCH
        )

    def time_sample_64_images(self, policy: str, sampler: str, steps: int) -> None:
        self.run()

    def peakmem_sample_64_images(self, policy: str, sampler: str, steps: int) -> None:
        self.run()


class Quality:
    """FID (offline CNN features, 500 samples), FLOP ratio per call, layer ratio and wall ratio
    per call of each cell, run once per ``asv run``."""

    params = (POLICY, SAMPLER, STEPS)
    param_names = PARAM_NAMES
    timeout = 900

    def setup_cache(self) -> dict:
        from bench.cache import ArtifactCache

        out = {}
        for policy in POLICY:
            for sampler in SAMPLER:
                for steps in STEPS:
                    cell = Cell(
                        recipe=POLICIES[policy].recipe,
                        policy=policy,
                        target_flop_ratio=None if policy == "full" else TARGET,
                        sampler=sampler,
                        steps=steps,
                        samples=QUALITY_SAMPLES,
                    )
                    out[(policy, sampler, steps)] = run_cell(cell, ArtifactCache())
        return out

    def track_fid(self, records: dict, policy: str, sampler: str, steps: int) -> float:
        return records[(policy, sampler, steps)]["fid"]

    track_fid.unit = "FID"

    def track_flop_ratio(self, records: dict, policy: str, sampler: str, steps: int) -> float:
        return records[(policy, sampler, steps)]["flop_ratio_per_call"]

    track_flop_ratio.unit = "FLOPs / full model"

    def track_layer_ratio(self, records: dict, policy: str, sampler: str, steps: int) -> float:
        return records[(policy, sampler, steps)]["layer_ratio"]

    track_layer_ratio.unit = "blocks / depth"

    def track_wall_ratio(self, records: dict, policy: str, sampler: str, steps: int) -> float:
        """Side by side with the plain forward on the same inputs (interleaved medians)."""
        return records[(policy, sampler, steps)]["wall_ratio_per_call"]

    track_wall_ratio.unit = "wall-clock / full model"
