"""bench.studies.diagnose: candidates train for their time budget through the suite's noise,
EMA and sampler path, and are measured at fixed noise levels."""

from __future__ import annotations

import math

import pytest
import torch

from bench.cache import ArtifactCache
from bench.studies import diagnose


@pytest.mark.parametrize("name", ["recipe", "unet"])
def test_a_candidate_trains_for_its_budget_and_is_probed(name, tmp_path, monkeypatch):
    scored = []

    def fake_fid(model, setup):  # FID needs the trained extractor: its path is tested elsewhere
        x = torch.randn(2, 1, 28, 28)
        scored.append(model(x, torch.tensor([5, 500]), None).shape)
        return 1.0, x

    monkeypatch.setattr(diagnose, "_fid", fake_fid)
    setup = diagnose._setup("mnist", ArtifactCache(tmp_path), samples=2, probe=16)
    res, _ = diagnose.run_candidate(diagnose.CANDIDATES[name], setup, seconds=1.0, evals=2)
    rows = res["rows"]
    assert [r["step"] for r in rows] == sorted(r["step"] for r in rows) and rows[0]["step"] >= 1
    assert rows[-1]["minutes"] >= 1.0 / 60
    for r in rows:
        assert set(r["eps"]) == {str(t) for t in diagnose.EPS_TIMESTEPS}
        assert all(math.isfinite(v) and v > 0 for v in r["eps"].values())
    assert "fid" in rows[-1] and scored == [torch.Size([2, 1, 28, 28])] * 2
    assert res["params"] > 0


@pytest.mark.parametrize(
    "argv", [["--minutes", "0"], ["--samples", "1"], ["--candidates", "vae"], ["--dataset", "x"]]
)
def test_bad_arguments_exit_2(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        diagnose.main([*argv, "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    assert not (tmp_path / "out").exists()


def test_samples_study_splits_one_run_into_disjoint_sets(shared_cache_dir, tmp_path):
    import pandas as pd

    from bench.studies import samples

    out = tmp_path / "s"
    argv = ["--model", "micro", "--sizes", "8", "16", "--steps", "2", "--out", str(out)]
    assert samples.main([*argv, "--cache-dir", str(shared_cache_dir)]) == 0
    df = pd.read_csv(out / "samples.csv")
    assert df["samples"].tolist() == [8, 16] and df["sets"].tolist() == [2, 1]
    assert (df["fid_boot_sd"] > 0).all() and (df["resolvable_fid_difference"] > 0).all()


@pytest.mark.parametrize("argv", [["--sizes", "1"], ["--model", "huge"]])
def test_samples_study_bad_arguments_exit_2(argv, tmp_path):
    from bench.studies import samples

    with pytest.raises(SystemExit) as e:
        samples.main([*argv, "--out", str(tmp_path / "s")])
    assert e.value.code == 2 and not (tmp_path / "s").exists()
