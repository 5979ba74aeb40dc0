from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from bench.train import TrainConfig, load_or_train, main

TINY = dict(model="micro", steps=6, batch_size=16, warmup=2)


def test_train_then_cache_hit_is_identical(cache):
    cfg = TrainConfig(**TINY)
    a = load_or_train(cfg, cache, progress=False)
    b = load_or_train(cfg, cache, progress=False)
    assert (a.cached, b.cached) == (False, True)
    for (k, va), vb in zip(
        a.model.state_dict().items(), b.model.state_dict().values(), strict=True
    ):
        assert torch.equal(va, vb), k
    assert b.meta["config"]["steps"] == 6 and b.meta["seconds_per_step"] > 0


def test_training_is_deterministic_given_seed(tmp_path):
    from bench.cache import ArtifactCache

    cfg = TrainConfig(**TINY)
    a = load_or_train(cfg, ArtifactCache(tmp_path / "a"), progress=False).model
    b = load_or_train(cfg, ArtifactCache(tmp_path / "b"), progress=False).model
    c = load_or_train(TrainConfig(**TINY, seed=1), ArtifactCache(tmp_path / "c"), progress=False)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c.model))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_training_moves_the_ema_weights(cache):
    """EMA decay warm-up: after a few steps the EMA has left its initialisation."""
    from bench.train import build_model

    cfg = TrainConfig(**TINY)
    torch.manual_seed(cfg.seed)
    init = torch.cat([p.flatten() for p in build_model(cfg).parameters()])
    ema = torch.cat(
        [p.flatten() for p in load_or_train(cfg, cache, progress=False).model.parameters()]
    )
    assert not torch.allclose(init, ema)


def test_class_conditional_training_runs(cache):
    tm = load_or_train(TrainConfig(**TINY, class_cond=True), cache, progress=False)
    out = tm.model(torch.randn(2, 1, 8, 8), torch.zeros(2), torch.tensor([3, 10]))
    assert out.shape == (2, 1, 8, 8)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--model", "huge"], "invalid choice"),
        (["--recipe", "magic"], "invalid choice"),
        (["--steps", "0"], "steps must be >= 1"),
        (["--recipe", "uem", "--lambda-ual", "-1"], "lambda_ual must be a finite number >= 0"),
        (["--recipe", "uem", "--lambda-u", "nan"], "lambda_u must be a finite number >= 0"),
        (["--dataset", "cifar10"], "no --data-root given"),
        (
            ["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"],
            "device",
        ),
    ],
)
def test_cli_bad_arguments_exit_2_with_one_line(args, match, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([*args, "--cache-dir", str(tmp_path), "--no-progress"])
    assert e.value.code == 2
    assert match in capsys.readouterr().err
    if "--dataset" not in args:  # (a dataset is found missing after the cache's lock file)
        assert not any(tmp_path.iterdir())  # nothing written


def test_cli_trains_then_hits_cache(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "bench.train",
        "--model",
        "micro",
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--cache-dir",
        str(tmp_path),
        "--no-progress",
    ]
    first = subprocess.run(cmd, capture_output=True, text=True, check=True)
    second = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert first.stdout.startswith("trained") and second.stdout.startswith("cache hit")
