from __future__ import annotations

import pytest

from bench.studies.ablation import main

SWEEP = """
[[sweep]]
model = "micro"
recipe = ["full", "full-ft", "uem"]
policy = "full"
sampler = "ddim"
steps = 3
samples = 40

[[sweep]]
model = "micro"
recipe = "uem"
policy = ["uem", "uem-official"]
target_flop_ratio = [0.8, 0.5]
sampler = "ddim"
steps = 3
samples = 40

[[sweep]]
model = "micro"
recipe = "layerwise"
policy = "static"
target_flop_ratio = 0.5
sampler = "ddim"
steps = 3
samples = 40

[[cell]]
model = "micro"
recipe = "uem"
policy = "uem"
target_flop_ratio = 0.65
sampler = "dpm-solver++"
steps = 2
samples = 40
"""


@pytest.fixture(scope="module")
def ablation_dir(tmp_path_factory, shared_cache_dir):
    root = tmp_path_factory.mktemp("ablation")
    (root / "sweep.toml").write_text(SWEEP)
    out = root / "out"
    args = ["--config", str(root / "sweep.toml"), "--out", str(out)]
    assert main([*args, "--cache-dir", str(shared_cache_dir)]) == 0
    return out


def test_ablation_writes_its_table_and_figures(ablation_dir):
    table = (ablation_dir / "ablation.md").read_text()
    assert "control `full-ft` FID" in table and "## Targets (issue 13)" in table
    assert "## Paired by sampling seed" in table
    # Each model at full depth against the control, and each exit variant at its targets.
    for row in ("| uem |", "| full |", "| full-ft |", "uem / uem-official", "layerwise / static"):
        assert row in table, row
    assert "`uem` at full depth" in table and ("met" in table)
    for name in ("ablation_fid_vs_flops", "ablation_heatmaps", "composition", "fid_vs_flops"):
        f = ablation_dir / "report" / f"{name}.png"
        assert f.exists() and f.stat().st_size > 1000, f


def test_report_only_redraws_without_running(ablation_dir, monkeypatch):
    from bench import run

    monkeypatch.setattr(run, "run_cell", lambda *a, **k: pytest.fail("work started"))
    (ablation_dir / "ablation.md").unlink()
    assert main(["--out", str(ablation_dir), "--report-only"]) == 0
    assert (ablation_dir / "ablation.md").exists()
