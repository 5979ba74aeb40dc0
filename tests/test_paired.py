"""Paired fidelity (bench.paired): the reference strips every compression and keeps the noise;
the metrics come from scikit-image and the extractor; records carry them."""

from __future__ import annotations

import math

import pytest
import torch

from bench.cache import ArtifactCache
from bench.cell import Cell
from bench.paired import paired_metrics, reference_cell
from bench.run import run_cell


class _Features:
    def __call__(self, images):
        return images.flatten(1).double()


def test_the_reference_keeps_the_noise_and_drops_every_compression():
    cell = Cell(
        model="micro",
        recipe="uem",
        policy="uem",
        target_flop_ratio=0.7,
        prune_ratio=0.3,
        sampler="dpm-solver++",
        steps=4,
        samples=8,
        seed=3,
    )
    ref = reference_cell(cell)
    assert (ref.recipe, ref.policy, ref.prune_ratio, ref.cache) == ("full", "full", 0.0, "none")
    assert (ref.sampler, ref.steps, ref.samples, ref.seed) == ("dpm-solver++", 4, 8, 3)
    assert ref.target_flop_ratio is None and reference_cell(ref) == ref


def test_paired_metrics_on_known_pairs():
    ref = torch.rand(4, 1, 8, 8) * 2 - 1
    same = paired_metrics(ref, ref.clone(), _Features())
    assert same["identical_share"] == 1.0 and same["psnr"] is None
    assert same["ssim"] == pytest.approx(1.0) and same["feat_dist"] == pytest.approx(0.0)
    shifted = (ref + 0.05).clamp(-1, 1)
    mse = float((shifted - ref).pow(2).flatten(1).mean(1).mean())
    out = paired_metrics(shifted, ref, _Features())
    assert out["identical_share"] == 0.0 and out["ssim"] < 1.0 and out["feat_dist"] > 0
    assert out["psnr"] == pytest.approx(10 * math.log10(4 / mse), rel=0.05)
    with pytest.raises(ValueError, match="same shape"):
        paired_metrics(ref[:2], ref, _Features())


def test_records_carry_paired_fidelity_against_the_cached_reference(shared_cache_dir):
    cache = ArtifactCache(shared_cache_dir)  # micro models train once per session
    cell = Cell(model="micro", recipe="uem", policy="uem", knob=0.3, steps=4, samples=16)
    rec = run_cell(cell, cache, torch.device("cpu"))
    assert rec["paired_reference"] == reference_cell(cell).key
    assert 0 < rec["ssim"] <= 1 and rec["feat_dist"] >= 0 and 0 <= rec["identical_share"] <= 1
    assert cache.has("reference-samples", reference_cell(cell).key)
    own = run_cell(reference_cell(cell), cache, torch.device("cpu"))
    assert own["identical_share"] == 1.0 and own["ssim"] == pytest.approx(1.0)
