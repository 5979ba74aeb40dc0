"""The shipped checkpoints must match what the default sweep asks for: a change to a training
config, recipe or the cache version that changes a key fails here (regenerate them with
``python -m bench.ship``) instead of silently retraining for 45 minutes on users' machines."""

from __future__ import annotations

from bench.cache import ArtifactCache
from bench.ship import main


def test_every_artifact_of_the_default_sweep_is_shipped_and_intact(capsys):
    assert main(["--check"]) == 0, capsys.readouterr().out


def test_check_reports_what_is_missing(tmp_path, capsys):
    assert main(["--check", "--to", str(tmp_path)]) == 1
    assert "is not shipped" in capsys.readouterr().out


def test_a_corrupt_shipped_file_is_ignored_not_deleted(tmp_path):
    import torch

    shipped = ArtifactCache(tmp_path / "shipped", shipped=())
    path = shipped.save("thing", "k", {"w": torch.ones(3)}, {})
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    cache = ArtifactCache(tmp_path / "cache", shipped=(tmp_path / "shipped",))
    assert cache.load("thing", "k") is None and path.exists()
    _, _, was_cached = cache.get_or_build("thing", "k", lambda: ({"w": torch.zeros(3)}, {}))
    assert not was_cached and cache.path("thing", "k").exists()
