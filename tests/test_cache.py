from __future__ import annotations

import threading
import time

import pytest
import torch

from bench.cache import config_hash, file_lock
from bench.train import TrainConfig


def test_config_hash_is_stable_and_sensitive():
    a, b = TrainConfig(), TrainConfig()
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(TrainConfig(seed=1))
    assert config_hash(a, "x") != config_hash(a, "y")


def test_roundtrip_and_hit(cache):
    calls = []

    def build():
        calls.append(1)
        return {"w": torch.arange(6.0).view(2, 3)}, {"note": "hi"}

    t1, _m1, hit1 = cache.get_or_build("thing", "k", build)
    t2, m2, hit2 = cache.get_or_build("thing", "k", build)
    assert (hit1, hit2) == (False, True) and len(calls) == 1
    assert torch.equal(t1["w"], t2["w"]) and m2 == {"note": "hi"}
    # Nothing but the artifact is left: no temp files, no lock file.
    left = sorted(p.name for p in cache.path("thing", "k").parent.iterdir())
    assert left == ["k.safetensors"]


def test_a_failed_build_leaves_no_lock_file(cache):
    def build():
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        cache.get_or_build("thing", "k", build)
    assert list(cache.root.joinpath("thing").iterdir()) == []


def test_file_lock_is_exclusive_and_removed_while_a_waiter_still_gets_it(tmp_path):
    path, order = tmp_path / "x.lock", []
    got_first = threading.Event()

    def waiter():
        got_first.wait()
        with file_lock(path) as held:  # blocks until the first holder lets go
            order.append(("second", held, path.exists()))

    t = threading.Thread(target=waiter)
    t.start()
    with file_lock(path) as held:
        with file_lock(path, wait=False) as other:
            assert held and not other  # held: a non-waiting second claim fails at once
        got_first.set()
        time.sleep(0.3)  # the waiter is now blocked on this file
        order.append(("first", held, path.exists()))
    t.join(timeout=10)
    # The waiter ran after the first holder, holding a lock file of its own, and both are gone.
    assert order == [("first", True, True), ("second", True, True)]
    assert not path.exists()


def test_truncated_file_is_detected_and_rebuilt(cache):
    cache.save("thing", "k", {"w": torch.ones(100)}, {})
    path = cache.path("thing", "k")
    path.write_bytes(path.read_bytes()[:-37])
    assert cache.load("thing", "k") is None
    assert not path.exists()
    _, _, hit = cache.get_or_build("thing", "k", lambda: ({"w": torch.zeros(1)}, {}))
    assert hit is False and path.exists()


def test_flipped_bit_is_detected(cache):
    cache.save("thing", "k", {"w": torch.ones(100)}, {})
    path = cache.path("thing", "k")
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    assert cache.load("thing", "k") is None


def test_garbage_file_is_detected(cache):
    path = cache.path("thing", "k")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a safetensors file")
    assert cache.load("thing", "k") is None
