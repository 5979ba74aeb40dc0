"""Resumable training (bench.resume): a killed run continues from its last save and ends in the
same weights as an uninterrupted one; a state that is not this run's is refused and kept."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench import train as train_mod
from bench import trainloop
from bench.cache import ArtifactCache
from bench.resume import Resume, ResumeError
from bench.train import TrainConfig, TrainOptions, load_or_train, train

CFG = TrainConfig(model="micro", steps=30, batch_size=16, warmup=4)


class Killed(Exception):
    """Stands in for a kill: raised right after the state of step ``at`` is saved."""


def _kill_after_save(monkeypatch, at: int) -> None:
    real = Resume.save

    def save(self, run, done, loss_ema, seconds):
        real(self, run, done, loss_ema, seconds)
        if done == at:
            raise Killed

    monkeypatch.setattr(Resume, "save", save)


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_killed_run_resumes_and_ends_in_the_same_weights(tmp_path, monkeypatch):
    whole, _ = train(CFG, TrainOptions(progress=False))
    resume = Resume(tmp_path / "state.safetensors", {"run": "x"}, every=10)
    with monkeypatch.context() as m:
        _kill_after_save(m, at=20)
        with pytest.raises(Killed):
            train(CFG, TrainOptions(progress=False, resume=resume))
    steps_run = []
    real_noisy = trainloop.noisy_batch
    monkeypatch.setattr(
        trainloop, "noisy_batch", lambda *a, **k: steps_run.append(1) or real_noisy(*a, **k)
    )
    resumed, meta = train(CFG, TrainOptions(progress=False, resume=resume))
    assert len(steps_run) == 10  # steps 21..30 only
    _assert_same(whole, resumed)
    assert meta["steps"] == 30 and meta["train_seconds"] > 0


def test_a_finished_state_returns_its_weights_without_training(tmp_path, monkeypatch):
    resume = Resume(tmp_path / "state.safetensors", {"run": "x"}, every=10)
    first, _ = train(CFG, TrainOptions(progress=False, resume=resume))
    monkeypatch.setattr(trainloop, "noisy_batch", lambda *a, **k: pytest.fail("trained again"))
    again, _ = train(CFG, TrainOptions(progress=False, resume=resume))
    _assert_same(first, again)


def test_load_or_train_resumes_a_killed_fine_tune_and_cleans_up(tmp_path, monkeypatch):
    cfg = dataclasses.replace(CFG, recipe="uem", finetune_steps=20)
    whole = load_or_train(cfg, ArtifactCache(tmp_path / "a", shipped=()), progress=False)
    cache = ArtifactCache(tmp_path / "b", shipped=())
    with monkeypatch.context() as m:
        _kill_after_save(m, at=10)  # the base run (30 steps) passes step 10 first
        with pytest.raises(Killed):
            load_or_train(cfg, cache, progress=False, save_every=5)
    assert len(list((cache.root / "resume").glob("*.safetensors"))) == 1
    resumed = load_or_train(cfg, cache, progress=False, save_every=5)
    _assert_same(whole.model.state_dict(), resumed.model.state_dict())
    assert not list((cache.root / "resume").glob("*.safetensors"))  # deleted once cached


def test_a_state_of_another_run_is_refused_and_kept(tmp_path):
    path = tmp_path / "state.safetensors"

    def saving_as(key: str) -> TrainOptions:
        return TrainOptions(progress=False, resume=Resume(path, {"checkpoint": key}, every=10))

    train(CFG, saving_as("aaaa"))
    with pytest.raises(ResumeError, match=r"belongs to another run.*kept: delete it"):
        train(CFG, saving_as("bbbb"))
    assert path.exists()
    bigger = dataclasses.replace(CFG, model="tiny")
    with pytest.raises(ResumeError, match="does not fit this model"):
        train(bigger, saving_as("aaaa"))


def test_the_cli_refuses_a_corrupt_state_in_one_line_and_keeps_it(tmp_path, capsys):
    cache = ArtifactCache(tmp_path, shipped=())
    key = TrainConfig(model="micro", steps=30, batch_size=16).normalised().key
    path = cache.root / "resume" / f"checkpoint-{key}.safetensors"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a state")
    argv = ["--model", "micro", "--steps", "30", "--cache-dir", str(tmp_path), "--no-progress"]
    with pytest.raises(SystemExit) as e:
        train_mod.main([*argv, "--batch-size", "16"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "is corrupt" in err and "Traceback" not in err
    assert path.read_bytes() == b"not a state"


def test_save_every_must_not_be_negative(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train_mod.main(["--model", "micro", "--save-every", "-1", "--cache-dir", str(tmp_path)])
    assert e.value.code == 2 and "save_every must be >= 0" in capsys.readouterr().err


def test_a_killed_iterative_prune_resumes_and_ends_in_the_same_weights(tmp_path, monkeypatch):
    from bench.prune import PruneConfig, load_or_prune

    base = TrainConfig(model="micro", steps=6, batch_size=8, warmup=1)
    pc = PruneConfig(base=base, ratio=0.3, importance="magnitude", finetune_steps=12, rounds=2)
    whole = load_or_prune(pc, ArtifactCache(tmp_path / "a", shipped=()), progress=False)
    cache = ArtifactCache(tmp_path / "b", shipped=())
    load_or_train(base, cache, progress=False)  # the base model, so the kill hits the prune
    saves, real = [], Resume.save

    def save(self, run, done, loss_ema, seconds):
        real(self, run, done, loss_ema, seconds)
        saves.append(done)
        if len(saves) == 3:  # round 1 saved at 4 and 6; killed 4 steps into the last fine-tune
            raise Killed

    with monkeypatch.context() as m:
        m.setattr(Resume, "save", save)
        m.setattr(Resume, "due", lambda self, done, total: done in (4, total))
        with pytest.raises(Killed):
            load_or_prune(pc, cache, progress=False)
    assert len(list((cache.root / "resume").glob("pruned-*.safetensors"))) == 2
    resumed = load_or_prune(pc, cache, progress=False)
    _assert_same(whole.model.state_dict(), resumed.model.state_dict())
    assert not list((cache.root / "resume").glob("*.safetensors"))
