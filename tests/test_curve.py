"""bench.studies.curve: one training run, EMA snapshots, FID per snapshot; resumes without
retraining."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
import torch

import bench.studies.curve as curve
from bench.cache import ArtifactCache
from bench.studies.curve import CurveOptions
from bench.train import TrainConfig, load_or_train

CFG = TrainConfig(model="micro", steps=6, batch_size=16, warmup=2)
QUICK = CurveOptions(samples=16, sampling_steps=2, progress=False)


def test_curve_scores_every_snapshot_and_caches_the_final_model(tmp_path, monkeypatch):
    cache = ArtifactCache(tmp_path / "cache")  # the shipped digits extractor and stats
    out = tmp_path / "curve"
    df = curve.training_curve(CFG, 4, out, cache, QUICK)
    assert df["step"].tolist() == [4, 6]  # every 4 steps, and the last one
    assert df["train_minutes"].is_monotonic_increasing and (df["train_minutes"] > 0).all()
    assert (df["fid"] > 0).all() and (df["fid_over_floor"] == df["fid"] / df["floor"]).all()
    assert pd.read_csv(out / "curve.csv")["step"].tolist() == [4, 6]
    for name in ("curve.md", "curve.png", "samples_final.png"):
        assert (out / name).stat().st_size > 0
    # The final snapshot is the checkpoint the sweep loads: no second training run.
    trained = load_or_train(CFG, cache, progress=False)
    assert trained.cached
    last, _ = ArtifactCache(out / "snapshots", shipped=()).load("snapshot", "step000006")
    assert all(torch.equal(v, last[k]) for k, v in trained.model.state_dict().items())

    def no_training(*a, **k):
        raise AssertionError("retrained although every snapshot was kept")

    monkeypatch.setattr(curve, "train", no_training)
    again = curve.training_curve(CFG, 4, out, cache, CurveOptions(samples=16, sampling_steps=2))
    assert again["fid"].tolist() == df["fid"].tolist()  # same snapshots, same seed


def test_a_killed_curve_run_resumes_training_and_scores_the_same(tmp_path, monkeypatch):
    from bench.resume import Resume

    cache = ArtifactCache(tmp_path / "cache")
    whole = curve.training_curve(CFG, 4, tmp_path / "a", cache, QUICK)
    assert (whole["fid_heldout"] > 0).all() and (whole["nn_train"] > 0).all()
    assert (whole["nn_train_real"] > 0).all()
    real = Resume.save

    def save_then_die(self, run, done, loss_ema, seconds):
        real(self, run, done, loss_ema, seconds)
        if done == 4:
            raise KeyboardInterrupt

    other = ArtifactCache(tmp_path / "cache2")
    killed = CurveOptions(progress=False, save_every=2)
    with monkeypatch.context() as m:
        m.setattr(Resume, "save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            curve.training_curve(CFG, 4, tmp_path / "b", other, killed)
    assert list((other.root / "resume").glob("*.safetensors"))
    # --partial scores what the killed run kept, training nothing.
    part = curve.training_curve(CFG, 4, tmp_path / "b", other, replace(QUICK, partial=True))
    assert part["step"].tolist() == [4] and part["fid"].tolist() == whole["fid"].tolist()[:1]
    with pytest.raises(ValueError, match="no snapshot"):
        curve.training_curve(CFG, 4, tmp_path / "c", other, replace(QUICK, partial=True))
    again = curve.training_curve(CFG, 4, tmp_path / "b", other, replace(QUICK, save_every=2))
    assert again["fid"].tolist() == whole["fid"].tolist()
    assert not list((other.root / "resume").glob("*.safetensors"))


@pytest.mark.parametrize("argv", [["--every", "0"], ["--dataset", "mnist28"]])
def test_curve_bad_input_is_an_argparse_error(argv, capsys):
    with pytest.raises(SystemExit) as e:
        curve.main(argv)
    assert e.value.code == 2
    assert "error:" in capsys.readouterr().err
