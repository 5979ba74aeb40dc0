"""The figure scripts that run cells go through the grid's store and the pipeline builder."""

from __future__ import annotations

import json

from bench.studies.fig_exits import main

SWEEP = """
[[sweep]]
model = "micro"
recipe = ["full", "uem"]
policy = "full"
steps = 3
samples = 16

[[sweep]]
model = "micro"
recipe = "uem"
policy = "uem"
target_flop_ratio = [0.8, 0.6]
steps = 3
samples = 16
"""


def test_fig_exits_draws_from_the_records_of_its_sweep(tmp_path):
    config = tmp_path / "sweep.toml"
    config.write_text(SWEEP)
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["--config", str(config), "--out", str(out), "--cache-dir", str(cache)]
    assert main([*args, "--batch", "16", "--repeats", "1"]) == 0
    report = json.loads((out / "figures.json").read_text())
    assert [r["recipe"] for r in report["recipes"]] == ["full", "uem"]
    assert [r["target"] for r in report["policies"]] == [0.8, 0.6]
    assert len(list((out / "grid" / "records").glob("*.json"))) == 4  # cells in the store
    # The wall table runs the records' own (micro, 5-block) model at their calibrated knobs:
    # its FLOP ratios fall with the knob, never-exit first at 1.
    flops = [r["flop_ratio"] for r in report["wallclock"]]
    assert flops[0] == 1.0 or abs(flops[0] - 1) < 0.02
    assert len(flops) == 3 and flops[1] > flops[2]
    assert report["depth"] == 5 and report["uem_exit_by_t"]
    assert (out / "uem_exit_by_t.png").stat().st_size > 0
