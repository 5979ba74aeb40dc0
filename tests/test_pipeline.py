"""The one pipeline builder: calibration runs on the cell's numerics and measures costs once."""

from __future__ import annotations

import importlib

import torch

from bench.cache import ArtifactCache
from bench.cell import Cell
from bench.pipeline import build_pipeline

# The modules (the package re-exports functions of the same names).
calibrate_mod = importlib.import_module("adaptive.calibrate")
executor_mod = importlib.import_module("blockloop.executor")


def _cell(**kw) -> Cell:
    return Cell(model="micro", recipe="uem", policy="uem", steps=3, samples=8, **kw)


def test_calibration_runs_under_the_cells_autocast(tmp_path, monkeypatch):
    seen = []
    real = calibrate_mod.samplers.sample

    def spy(*a, **k):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"))
        return real(*a, **k)

    monkeypatch.setattr(calibrate_mod.samplers, "sample", spy)
    cache = ArtifactCache(tmp_path)
    build_pipeline(_cell(target_flop_ratio=0.7, autocast="bf16"), cache, progress=False)
    assert seen and all(s == torch.bfloat16 for s in seen)  # every calibration pass in bf16
    seen.clear()
    build_pipeline(_cell(target_flop_ratio=0.7), cache, progress=False)
    assert seen and not any(seen)  # and an fp32 cell in fp32


def test_calibration_measures_the_cost_model_once(tmp_path, monkeypatch):
    built = []
    real = executor_mod.CostModel.__init__

    def counting(self, *a, **k):
        built.append(1)
        real(self, *a, **k)

    monkeypatch.setattr(executor_mod.CostModel, "__init__", counting)
    pipe = build_pipeline(_cell(target_flop_ratio=0.6), ArtifactCache(tmp_path), progress=False)
    passes = len(pipe.calibration.history)
    assert passes > 2  # a real search ran
    assert len(built) <= 2  # the calibrator's executor and the pipeline's, not one per pass
    assert abs(pipe.calibration.achieved - 0.6) < 0.15


def test_a_bf16_cell_runs_end_to_end_with_exits(tmp_path):
    """Under autocast the readouts are bf16; the executor writes them into the fp32 output
    (this failed before the executor cast them)."""
    from bench.run import run_cell

    rec = run_cell(_cell(target_flop_ratio=0.7, autocast="bf16"), ArtifactCache(tmp_path))
    assert rec["nonfinite"] is False and rec["fid"] > 0
    assert 0 < rec["flop_ratio_per_call"] < 1


def test_the_cells_sampler_options_reach_calibration_and_sampling(tmp_path, monkeypatch):
    """order / spacing / end of a cell drive every sampler call (calibration and the run); the
    label names them and unset ones keep the key of a cell without them."""
    seen = []
    real = calibrate_mod.samplers.sample

    def spy(name, *a, **k):
        seen.append((name, k.get("order"), k.get("spacing"), k.get("end")))
        return real(name, *a, **k)

    monkeypatch.setattr(calibrate_mod.samplers, "sample", spy)
    opts = {"sampler": "dpm-solver++", "order": 3, "spacing": "logSNR", "end": "eps"}
    cell = _cell(target_flop_ratio=0.7, **opts)
    pipe = build_pipeline(cell, ArtifactCache(tmp_path), progress=False)
    assert seen and all(s == ("dpm-solver++", 3, "logSNR", "eps") for s in seen)
    seen.clear()
    real_get = calibrate_mod.samplers.get_sampler  # what bench.sampling.generate looks up

    def get(name):
        fn = real_get(name)
        return lambda *a, **k: spy(name, *a, **k) if fn else None

    monkeypatch.setattr(calibrate_mod.samplers, "get_sampler", get)
    pipe.sample(4, seed=0)
    assert seen == [("dpm-solver++", 3, "logSNR", "eps")]
    assert "dpm-solver++3-3 logSNR eps" in cell.label()
    assert _cell(order=None, spacing=None).key == _cell().key


def test_each_flop_target_tunes_its_own_knob(tmp_path):
    """Exits at 0.65 alone, a cache to 0.5 in total: exit_flop_ratio calibrates the exit knob
    with no cache, then target_flop_ratio the cache's knob with those exits running."""
    from adaptive.calibrate import CalibrationRun, measure

    cell = _cell(exit_flop_ratio=0.8, cache="teacache", target_flop_ratio=0.5)
    assert cell.label().startswith("micro uem uem@0.8 teacache@0.5")
    pipe = build_pipeline(cell, ArtifactCache(tmp_path), progress=False)
    assert pipe.knob is not None and pipe.cache_knob is not None
    assert abs(pipe.calibration.achieved - 0.5) < 0.15  # the total, exits and cache together
    # The exit knob alone gives (about) its own target; the cache takes the rest.
    run = CalibrationRun(steps=3, n=64)
    alone = measure(pipe.model, pipe.schedule, cell.exit_spec.with_knob(pipe.knob), run)
    assert abs(alone.flop_ratio - 0.8) < 0.15
    assert alone.flop_ratio > pipe.calibration.achieved


def test_exit_flop_ratio_needs_a_calibrated_cache():
    import pytest

    with pytest.raises(ValueError, match="set cache and target_flop_ratio"):
        _cell(exit_flop_ratio=0.7, target_flop_ratio=0.5)
    with pytest.raises(ValueError, match="must be <= exit_flop_ratio"):
        _cell(exit_flop_ratio=0.5, cache="teacache", target_flop_ratio=0.7)
    with pytest.raises(ValueError, match="not both"):
        _cell(exit_flop_ratio=0.7, knob=0.1, cache="teacache", target_flop_ratio=0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        _cell(exit_flop_ratio=1.5, cache="teacache", target_flop_ratio=0.5)
