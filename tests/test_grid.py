from __future__ import annotations

import json
import re

import pytest
import torch

import bench.grid as grid
import bench.pipeline as pipeline
import bench.run as runner
from bench.cache import ArtifactCache, config_hash
from bench.cell import Cell
from bench.grid import load_config, main
from bench.store import write_tables


def _cfg(tmp_path, body: str):
    path = tmp_path / "sweep.toml"
    path.write_text(body)
    return path


SMALL = """
[sweep]
model = "micro"
sampler = ["ddim", "dpm-solver++"]
steps = 2
samples = 16
policy = "static"
knob = [1, 2]
recipe = "layerwise"
"""


def test_config_sweep_expands_axes(tmp_path):
    cells = load_config(_cfg(tmp_path, SMALL))
    assert len(cells) == 4 and {c.sampler for c in cells} == {"ddim", "dpm-solver++"}


def test_each_varies_fields_together(tmp_path):
    body = (
        "[[sweep]]\nprune_ratio = [0.15, 0.3]\n"
        'each = [{ sampler = "ddim", steps = 20 }, { sampler = "dpm-solver++", steps = 10 }]\n'
    )
    cells = load_config(_cfg(tmp_path, body))
    got = {(c.prune_ratio, c.sampler, c.steps) for c in cells}
    assert got == {(r, s, n) for r in (0.15, 0.3) for s, n in (("ddim", 20), ("dpm-solver++", 10))}


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ('[[cell]]\npolicy = "early"\n', "valid choices: full, static"),
        ('[[cell]]\nsampler = "heun"\n', "valid choices: ddpm, ddim"),
        ('[[cell]]\npolicy = "uem"\nknob = 0.1\n', "needs recipe uem"),
        ('[[cell]]\npolicy = "uem"\nrecipe = "uem"\nknob = 3.0\n', r"tau must be in \[0.0, 1.0\]"),
        ("[[cell]]\nprune_ratio = 1.0\n", r"\[0, 1\)"),
        ('[[cell]]\ncolour = "red"\n', "unknown cell field"),
        ("[sweep]\nwidth = [1, 2]\n", "unknown sweep axis"),
        ("", "defines no"),
        ("nothing = 1\n", r"unknown section\(s\) \['nothing'\]; valid: cell, sweep"),
        ('[[cell]]\nsteps = "ten"\n', "#1: field 'steps' must be an integer, got 'ten'"),
        ("[[cell]]\nsteps = 2.5\n", "field 'steps' must be an integer"),
        ("[[cell]]\nsamples = true\n", "field 'samples' must be an integer, got True"),
        ("[[cell]]\nprune_ratio = nan\n", "field 'prune_ratio' must be a finite number"),
        ("[[cell]]\ncfg_exit_together = 1\n", "must be a boolean"),
        ("[[cell]]\nseed = -1\n", r"seed must be an integer in \[0, 2\*\*32\)"),
        ("[[cell]]\nsteps = 5000\n", "steps must be <= the schedule's T = 1000"),
        ("[[cell]]\ntarget_flop_ratio = 0.5\n", "'full' never exits"),
        (
            '[[cell]]\nrecipe = "uem"\npolicy = "uem"\nknob = 0.1\ntarget_flop_ratio = 0.5\n',
            "not both",
        ),
        ("cell = { steps = 3 }\n", "'cell' must be \\[\\[cell\\]\\] tables"),
        ("[sweep]\nsteps = [[1, 2]]\n", "axis 'steps' must be a value or a non-empty list"),
        ("[sweep]\nsteps = []\n", "axis 'steps' must be a value or a non-empty list"),
        ("[sweep]\neach = [1, 2]\n", "'each' must be a non-empty list of inline tables"),
        ("[sweep]\neach = [{ colour = 1 }]\n", "unknown field\\(s\\) in 'each'"),
        ("[sweep]\nsteps = 3\neach = [{ steps = 4 }]\n", "set both in 'each' and as axes"),
        ("[[cell]]\nprune_distill = 1.0\n", "need prune_ratio > 0"),
        ("[[cell]]\nprune_ratio = 0.3\nprune_finetune_steps = 0\n", "finetune_steps must be >= 1"),
        ("[sweep]\nsteps = 3\n[extra]\nx = 1\n", r"unknown section\(s\) \['extra'\]"),
        ("[[sweep]]\nsteps = 3\n[[sweep]]\nsteps = 0\n", "sweep #2: samples must be >= 2"),
        ('[[cell]]\ndevice = "tpu"\n', "valid choices: cpu, cuda"),
        ('[[cell]]\nreference = "test"\n', "valid choices: train, heldout"),
        ('[[cell]]\nrecipe = "uem-sumed"\n', "valid choices: full, full-ft"),
        ('[[cell]]\nrecipe = "uem"\nlambda_ual = -1.0\n', "lambda_ual must be a finite"),
        ('[[cell]]\nrecipe = "uem"\npolicy = "uem"\npatience = 0\n', "patience must be"),
        ('[[cell]]\nrecipe = "full"\nlambda_u = 0.5\n', "lambda_u applies to recipes uem"),
        ('[[cell]]\nrecipe = "full"\nfinetune_steps = 10\n', "finetune_steps applies"),
        ('[[cell]]\npolicy = "static"\nrecipe = "layerwise"\npatience = 2\n', "bad options"),
        (
            '[[cell]]\nrecipe = "uem"\npolicy = "uem-official"\nguidance = 1.5\n'
            "cfg_exit_together = true\n",
            "decides once per batch",
        ),
        ('[[sweep]]\nrecipe = "uem"\nlambda_u = [1.0, -0.5]\n', "lambda_u must be a finite"),
        (
            '[[cell]]\nrecipe = "layerwise"\npolicy = "static"\nknob = 9\n',
            r"in \[0, 8\] for model 'tiny'",
        ),
    ],
)
def test_bad_config_is_one_clear_error_before_any_work(tmp_path, body, match, capsys, monkeypatch):
    monkeypatch.setattr(runner, "run_cell", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(SystemExit) as e:
        main(["--config", str(_cfg(tmp_path, body)), "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert re.search(match, err), err
    assert err.count("error:") == 1 and "Traceback" not in err
    if match != "defines no":
        assert str(tmp_path / "sweep.toml") in err  # the message names the file
    assert not (tmp_path / "out").exists()  # nothing written


def test_interrupted_sweep_resumes_and_loses_nothing(tmp_path, monkeypatch):
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["--config", str(_cfg(tmp_path, SMALL)), "--out", str(out), "--cache-dir", str(cache)]
    real, calls = runner.run_cell, []

    def crash_on_third(cell, *a, **k):
        calls.append(cell.key)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed mid-cell")  # not an error a cell records
        return real(cell, *a, **k)

    monkeypatch.setattr(runner, "run_cell", crash_on_third)
    with pytest.raises(KeyboardInterrupt, match="killed"):
        main(args)
    done = sorted(p.name for p in (out / "records").iterdir())
    assert len(done) == 2 and all(n.endswith(".json") for n in done)  # no temp files
    first = {n: (out / "records" / n).read_text() for n in done}

    calls.clear()
    monkeypatch.setattr(
        runner, "run_cell", lambda cell, *a, **k: (calls.append(cell.key), real(cell, *a, **k))[1]
    )
    assert main(args) == 0
    assert len(calls) == 2  # only the unfinished cells ran again
    assert all((out / "records" / n).read_text() == t for n, t in first.items())
    table = (out / "table.csv").read_text().splitlines()
    assert len(table) == 5  # header + 4 cells, no duplicates
    rec = json.loads((out / "records" / done[0]).read_text())
    assert rec["extractor"].startswith("cnn-digits") and rec["nfe"] == 2
    assert rec["nonfinite"] is False and rec["fid"] > 0 and 0 < rec["flop_ratio_per_call"] <= 1
    assert 0 < rec["wall_ratio_per_call"] < 10 and len(rec["seconds_per_image_repeats"]) >= 1
    # A second full run is all cache: nothing runs.
    calls.clear()
    assert main(args) == 0 and calls == []


def test_nonfinite_samples_are_flagged_not_averaged(tmp_path, monkeypatch):
    def nan_generate(*a, timings, **k):
        timings.append(0.1)
        return torch.full((16, 1, 8, 8), float("nan")), 2

    monkeypatch.setattr(pipeline, "generate", nan_generate)
    rec = runner.run_cell(
        Cell(model="micro", steps=2, samples=16), ArtifactCache(tmp_path), torch.device("cpu")
    )
    assert rec["nonfinite"] is True and rec["fid"] is None
    write_tables(tmp_path, [rec])
    summary = (tmp_path / "summary.md").read_text()
    assert "Best FID" in summary and "| 1.0 |" not in summary  # never counted as a best cell


def test_list_and_dry_run(capsys, tmp_path):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "uem: tau in [0.0, 1.0]" in out and "dpm-solver++" in out
    assert main(["--dry-run", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(grid.default_cells()) and all(" todo " in ln for ln in lines)
    labels = [ln.split(None, 2)[2] for ln in lines]
    assert len(set(labels)) == len(labels)  # seeds shown: the headline repeats are told apart
    assert sum(ln.endswith(" seed 1") for ln in lines) == 4


def test_calibrated_knob_transfers_to_the_evaluated_run(tmp_path):
    """Calibration must sample exactly as the evaluation does (same sampler options), or the
    knob does not transfer: regression test for calibrating without clip_denoised."""
    cell = Cell(
        model="micro",
        recipe="uem",
        policy="uem",
        target_flop_ratio=0.7,
        sampler="ddim",
        steps=4,
        samples=64,
    )
    phases: list[str] = []
    rec = runner.run_cell(cell, ArtifactCache(tmp_path), torch.device("cpu"), phase=phases.append)
    assert phases == ["train", "calibrate", "sample", "time", "score"]  # what the bar shows
    # Same 64-sample batch size; the seeds differ, so allow sampling noise.
    assert abs(rec["flop_ratio_per_call"] - rec["calibration_flop_ratio"]) < 0.1, rec


@pytest.mark.parametrize(
    "name",
    ["guidance", "exits", "paper", "deediff", "caching", "samplers", "pruning", "text", "mnist"],
)
def test_shipped_sweep_files_are_valid(name):
    from pathlib import Path

    path = Path(grid.__file__).parent / "sweeps" / f"{name}.toml"
    cells = load_config(path)
    assert cells and len({c.key for c in cells}) == len(cells)


def test_cell_keys_ignore_fields_at_their_default():
    """Adding a field with a default to Cell must not change existing keys (records stay)."""
    assert Cell().key == config_hash({}, kind="cell")
    assert Cell(steps=50).key == config_hash({"steps": 50}, kind="cell")
    assert Cell(steps=50).key != Cell(steps=20).key
    # A recipe or policy whose meaning changed (revision > 0) changes the keys that use it.
    uem = Cell(recipe="uem", policy="uem", knob=0.1)
    plain = {"recipe": "uem", "policy": "uem", "knob": 0.1}
    assert uem.key == config_hash({**plain, "revisions": (1, 1)}, kind="cell")


def test_guided_cells_sample_the_class_conditional_model(tmp_path):
    """guidance selects the class-conditional checkpoint and samples 2 rows per image per call;
    cfg_exit_together makes a sample's two rows exit at one block."""
    cache = ArtifactCache(tmp_path, shipped=())
    common = dict(model="micro", recipe="uem", sampler="ddim", steps=2, samples=16)
    plain = runner.run_cell(Cell(**common, policy="full", guidance=2.0), cache)
    assert (
        plain["nfe"] == 2
        and plain["fid"] > 0
        and plain["flop_ratio_per_call"] == pytest.approx(1.0)
    )
    assert plain["flop_ratio_vs_reference"] == pytest.approx(2 / 1000)  # 2 of T=1000 steps
    together = runner.run_cell(
        Cell(**common, policy="uem", knob=0.5, guidance=2.0, cfg_exit_together=True), cache
    )
    counts = torch.tensor(together["exit_histogram"]["counts"]).sum(0)
    assert counts.sum() == 2 * 2 * 16  # (cond + uncond) rows x calls x samples
    with pytest.raises(ValueError, match="needs a guidance scale"):
        Cell(**common, cfg_exit_together=True)


def test_kill_9_mid_sweep_loses_nothing(tmp_path, shared_cache_dir):
    """A real SIGKILL of the grid process between (or inside) cells: no partial record is ever
    visible, and the rerun does only what is missing."""
    import os
    import signal
    import subprocess
    import sys
    import time

    cfg = _cfg(tmp_path, SMALL)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bench.grid", "--config", str(cfg), "--out", str(out)]
    cmd += ["--cache-dir", str(shared_cache_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "records").is_dir() and any((out / "records").glob("*.json")):
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p.name for p in (out / "records").iterdir()}
    assert before and all(n.endswith(".json") and not n.startswith(".") for n in before)
    for name in before:
        json.loads((out / "records" / name).read_text())  # complete, parseable
    assert (
        main(["--config", str(cfg), "--out", str(out), "--cache-dir", str(shared_cache_dir)]) == 0
    )
    after = {p.name for p in (out / "records").iterdir()}
    assert before <= after and len(after) == 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_cells_fail_before_any_work_without_cuda(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runner, "run_cell", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(SystemExit) as e:
        main(["--config", str(_cfg(tmp_path, '[[cell]]\ndevice = "cuda"\n'))])
    assert e.value.code == 2 and "sees no CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("plain_times", "other_cores", "measured", "unstable"),
    [
        ([1.0, 1.02, 0.99, 1.01, 1.0], 0.02, 1, False),  # steady: measured once
        ([1.0, 2.5, 1.0, 1.0, 1.0], 0.02, 1, False),  # one stray repeat: trimmed, steady
        ([1.0, 2.5, 1.8, 1.0, 1.0], 0.02, 2, True),  # busy twice: re-measured, then flagged
        # A steady competing load: every repeat slowed alike, only the CPU count sees it.
        ([1.0, 1.02, 0.99, 1.01, 1.0], 0.9, 2, True),
        ([1.0, 1.02, 0.99, 1.01, 1.0], None, 1, False),  # no /proc/stat: the spread decides
    ],
)
def test_side_by_side_timing_flags_an_unstable_reference(
    monkeypatch, plain_times, other_cores, measured, unstable
):
    calls = []

    class FakeLoad:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.cores = other_cores

    monkeypatch.setattr(runner, "OtherLoad", FakeLoad)

    def fake_times(fns, repeats):
        calls.append(repeats)
        plain = (plain_times * 2)[:repeats]
        return {"plain": plain, "cell": [0.6 * t for t in plain]}

    monkeypatch.setattr(runner, "interleaved_times", fake_times)
    x = torch.zeros(2, 1, 8, 8)
    wall = runner.side_by_side_wall_ratio(
        lambda *a: x, lambda *a: x, [(x, torch.zeros(2), None)], None, torch.device("cpu")
    )
    assert len(calls) == measured and calls[0] == runner.WALL_REPEATS
    assert wall["timing_unstable"] is unstable and wall["timing_other_cores"] == other_cores
    assert wall["wall_ratio_per_call"] == pytest.approx(0.6)
    assert len(wall["wall_ratio_repeats"]) == calls[-1]
