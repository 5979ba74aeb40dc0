from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture
def cache(tmp_path):
    from bench.cache import ArtifactCache

    return ArtifactCache(tmp_path / "cache")


@pytest.fixture(scope="session")
def shared_cache_dir(tmp_path_factory):
    """One artifact cache for the whole session (micro models train once), never the shipped
    checkpoints."""
    return tmp_path_factory.mktemp("shared-cache")


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread than on two (and far faster on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
