from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture
def cache(tmp_path):
    from bench.cache import ArtifactCache

    return ArtifactCache(tmp_path / "cache")
