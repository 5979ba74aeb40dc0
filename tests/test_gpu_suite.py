"""The prepared GPU run (bench.studies.gpu_suite) cannot fail on a typo: its CPU dry run runs
every part, writes its results as it goes, and refuses a machine without CUDA for the real run."""

from __future__ import annotations

import json

import pytest
import torch

from bench.studies.gpu_suite import PARTS, main


def test_the_dry_run_runs_every_part_and_writes_its_results(tmp_path, shared_cache_dir, one_thread):
    out = tmp_path / "gpu"
    assert main(["--dry-run", "--out", str(out), "--cache-dir", str(shared_cache_dir)]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert [p["part"] for p in doc["parts"]] == list(PARTS)
    assert all(p["rows"] and "error" not in p for p in doc["parts"]), doc["parts"]
    rows = {p["part"]: p["rows"] for p in doc["parts"]}
    executors = {r["executor"].split()[0] for r in rows["throughput"]}
    assert executors == {"never-exit", "uem", "uem-official"}
    assert 0 < rows["prune"][0]["FLOP ratio"] < 0.8  # 30% of heads and channels removed
    assert rows["cell"][0]["flop_ratio_per_call"] == pytest.approx(0.65, abs=0.02)
    assert "## cell" in (out / "results.md").read_text()


def test_a_time_box_skips_what_it_did_not_reach(tmp_path, shared_cache_dir, one_thread):
    out = tmp_path / "gpu"
    argv = ["--dry-run", "--parts", "throughput", "--part-minutes", "1e-9", "--out", str(out)]
    assert main([*argv, "--cache-dir", str(shared_cache_dir)]) == 0
    rows = json.loads((out / "results.json").read_text())["parts"][0]["rows"]
    assert rows == [{"model": "micro", "batch": 2, "skipped": "time box"}]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a CPU machine")
def test_the_real_run_needs_cuda(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path / "gpu"), "--device", "cpu"])
    assert e.value.code == 2 and "needs a CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "gpu").exists()
