"""The shipped checkpoints must match what the default sweep asks for: a change to a training
config, recipe or the cache version that changes a key fails here (regenerate them with
``python -m bench.studies.ship``) instead of silently retraining for hours on users'
machines."""

from __future__ import annotations

from bench.cache import ArtifactCache
from bench.studies.ship import main


def test_every_artifact_of_the_default_sweep_is_shipped_and_intact(capsys):
    assert main(["--check"]) == 0, capsys.readouterr().out


def test_check_reports_what_is_missing(tmp_path, capsys):
    assert main(["--check", "--to", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "not shipped" in out
    # Every missing artifact is listed, not only the first (checkpoints, pruned, extractor...).
    assert out.count("not shipped") >= 10 and "extractor/" in out and "pruned/" in out


def test_check_lists_every_corrupt_or_edited_artifact(tmp_path, capsys):
    """Flip a tensor byte in one shipped file and edit the metadata of another: both are
    listed, and the edited metadata is caught by its own checksum."""
    import json
    import shutil

    from bench.cache import SHIPPED_DIR

    shutil.copytree(SHIPPED_DIR, tmp_path / "ship")
    files = sorted((tmp_path / "ship" / "checkpoint").glob("*.safetensors"))
    data = bytearray(files[0].read_bytes())
    data[-1] ^= 0xFF
    files[0].write_bytes(bytes(data))
    data = files[1].read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["meta"])
    meta["final_loss"] = 0.0  # a tampered figure
    header["__metadata__"]["meta"] = json.dumps(meta, sort_keys=True)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    files[1].write_bytes(len(blob).to_bytes(8, "little") + blob + data[8 + n :])
    assert main(["--check", "--to", str(tmp_path / "ship")]) == 1
    out = capsys.readouterr().out
    assert f"{files[0].stem}: corrupt (checksum mismatch)" in out
    assert f"{files[1].stem}: corrupt (metadata checksum mismatch)" in out


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
