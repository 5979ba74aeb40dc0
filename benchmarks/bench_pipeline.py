"""asv suite: sampling speed, memory and quality over the grid's axes.

Parameters are grid axes (exit policy at a calibrated FLOP target, sampler, steps). The
trained models come from the artifact cache (or the checkpoints shipped in
``models/checkpoints``), so nothing is trained while timing; quality figures run their cells
once per ``asv run`` in ``setup_cache`` and the ``track_`` benchmarks read them.

Run ``asv run`` (or ``asv run --quick`` for one repeat); ``asv publish`` + ``asv preview`` show
the history. Everything here is CPU-sized: the whole suite takes a few minutes on 2 cores.
"""

from __future__ import annotations

from adaptive.policies import POLICIES
from bench.cell import Cell
from bench.pipeline import build_pipeline
from bench.run import run_cell
from caching import CACHES

POLICY = ["full", "uem"]
SAMPLER = ["ddim", "dpm-solver++"]
STEPS = [10, 20]
PARAM_NAMES = ["policy", "sampler", "steps"]
TARGET = 0.65  # the FLOP ratio every exit policy is calibrated to
BATCH = 64  # images per timed sampling run
QUALITY_SAMPLES = 500


def _cell(policy: str, sampler: str, steps: int, samples: int) -> Cell:
    """The grid cell of one benchmark parameter combination."""
    return Cell(
        recipe=POLICIES[policy].recipe,
        policy=policy,
        target_flop_ratio=None if POLICIES[policy].knob_name is None else TARGET,
        sampler=sampler,
        steps=steps,
        samples=samples,
    )


class Sampling:
    """Wall-clock and peak memory of sampling a batch of 64 digits (seconds for the batch:
    divide by 64 for seconds per image)."""

    params = (POLICY, SAMPLER, STEPS)
    param_names = PARAM_NAMES
    timeout = 600
    warmup_time = 0.5

    def setup(self, policy: str, sampler: str, steps: int) -> None:
        pipe = build_pipeline(_cell(policy, sampler, steps, BATCH), progress=False)
        self.run = lambda: pipe.sample(BATCH, seed=0, batch_size=BATCH)

    def time_sample_64_images(self, policy: str, sampler: str, steps: int) -> None:
        self.run()

    def peakmem_sample_64_images(self, policy: str, sampler: str, steps: int) -> None:
        self.run()


class ExitPolicies:
    """Wall-clock of sampling 64 digits with every exit policy calibrated to the same FLOP ratio
    (DDIM 20; ``full`` is the executor at full depth), side by side in one run: the
    per-policy wall-clock the FLOP ratio should become (issue 35). DyDiT is left out: its model
    is fine-tuned per FLOP target (~13 CPU-minutes), nothing ships for it."""

    params = ([p for p in POLICIES if p != "dydit"],)
    param_names = ("policy",)
    timeout = 600
    warmup_time = 0.5

    def setup(self, policy: str) -> None:
        pipe = build_pipeline(_cell(policy, "ddim", 20, BATCH), progress=False)
        self.run = lambda: pipe.sample(BATCH, seed=0, batch_size=BATCH)

    def time_sample_64_images(self, policy: str) -> None:
        self.run()


class CachedSampling:
    """Wall-clock of sampling 64 digits with each step-level cache calibrated to the same FLOP
    ratio as the exits (DDIM 20; ``none`` is the plain model), side by side in one run. Fitted
    caches fit on first use (TeaCache's polynomial, MagCache's ratios, the L2C router: a minute
    or two each), then come from the artifact cache."""

    params = (["none", *CACHES],)
    param_names = ("cache",)
    timeout = 600
    warmup_time = 0.5

    def setup(self, cache: str) -> None:
        target = None if cache == "none" else TARGET
        cell = Cell(cache=cache, target_flop_ratio=target, samples=BATCH)
        pipe = build_pipeline(cell, progress=False)
        self.run = lambda: pipe.sample(BATCH, seed=0, batch_size=BATCH)

    def time_sample_64_images(self, cache: str) -> None:
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
                    cell = _cell(policy, sampler, steps, QUALITY_SAMPLES)
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
