from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.metrics import (
    InceptionExtractor,
    Stats,
    evaluate,
    fid_from_feats,
    frechet_distance,
    get_extractor,
    kid_from_feats,
    reference_stats,
)


def _feats(seed, n=500, d=16, shift=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ a * scale + shift


@pytest.mark.parametrize(("shift", "scale"), [(0.0, 1.0), (0.3, 1.0), (0.0, 1.7), (1.0, 0.5)])
def test_fid_matches_clean_fid(shift, scale):
    from cleanfid.fid import frechet_distance as cf_fd

    a, b = Stats.of(_feats(0)), Stats.of(_feats(1, shift=shift, scale=scale))
    ours = frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    ref = cf_fd(a.mu, a.sigma, b.mu, b.sigma)
    assert ours == pytest.approx(ref, rel=1e-6)


def test_fid_and_kid_orders_distributions():
    base = _feats(0, n=1000)
    near, far = _feats(1, n=1000), _feats(2, n=1000, shift=0.5)
    assert fid_from_feats(base, near) < fid_from_feats(base, far)
    assert abs(kid_from_feats(base, near, num_subsets=20)) < kid_from_feats(base, far, 20)
    assert fid_from_feats(base, base) == pytest.approx(0.0, abs=1e-8)


def test_kid_matches_clean_fid():
    from cleanfid.fid import kernel_distance

    a, b = _feats(0, n=300), _feats(1, n=300, shift=0.2)
    # With one subset holding every row, both are the same deterministic statistic.
    ours = kid_from_feats(a, b, num_subsets=1, max_subset_size=300)
    ref = kernel_distance(a, b, num_subsets=1, max_subset_size=300)
    assert ours == pytest.approx(ref, rel=1e-9)


class _Proj:
    name = "proj-test"

    def __call__(self, images):
        g = torch.Generator().manual_seed(0)
        w = torch.randn(images[0].numel(), 8, generator=g, dtype=torch.float64)
        return images.flatten(1).double() @ w


def test_reference_stats_cached_and_evaluate_reports_extractor(cache):
    ref = reference_stats("digits", _Proj(), "train", cache)
    assert ref.feats.shape == (1438, 8)
    assert len(list((cache.root / "stats").glob("*.safetensors"))) == 1
    noise = torch.rand(300, 1, 8, 8) * 2 - 1
    res = evaluate(noise, "digits", _Proj(), cache)
    assert res["extractor"] == "proj-test" and res["n"] == 300 and res["fid"] > 0
    with pytest.raises(ValueError, match="NaN"):
        evaluate(torch.full((4, 1, 8, 8), float("nan")), "digits", _Proj(), cache)


def test_inception_wiring_with_a_random_network():
    class FakeInception(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2048, 299)

        def forward(self, x):
            assert x.shape[1:] == (3, 299, 299) and x.max() > 1  # resized, in [0, 255]
            return self.conv(x / 255).flatten(1)

    ext = InceptionExtractor(network=FakeInception())
    f = ext(torch.rand(3, 1, 8, 8) * 2 - 1)
    assert f.shape == (3, 2048) and f.dtype == torch.float64


def test_inception_without_weights_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"inception-2015-12-05\.pt"):
        InceptionExtractor(weights=tmp_path / "inception-2015-12-05.pt")


def test_unknown_extractor_lists_choices():
    with pytest.raises(ValueError, match="valid choices: cnn, inception"):
        get_extractor("clip", "digits")


def test_fid_bootstrap_sd_predicts_the_spread_over_fresh_sample_sets():
    """The bootstrap sd from one sample set (bench.intervals) against the sd of FID over 30
    independent sample sets of the same distribution: the same size, up to estimation error."""
    from bench.intervals import bootstrap_sd
    from bench.metrics import Stats, frechet_distance

    rng = np.random.default_rng(0)
    d, n = 16, 400
    ref = Stats.of(rng.standard_normal((20_000, d)))

    def fid(f):
        s = Stats.of(f)
        return frechet_distance(s.mu, s.sigma, ref.mu, ref.sigma)

    def draw():
        return 0.2 + 1.1 * rng.standard_normal((n, d))

    fresh = np.std([fid(draw()) for _ in range(30)], ddof=1)
    boot = bootstrap_sd(draw(), fid)
    assert 0.6 < boot / fresh < 1.6, (boot, fresh)


def test_kid_bootstrap_sd_predicts_the_spread_over_fresh_sample_sets():
    """As for FID: KID's bootstrap sd from one sample set against KID's sd over 30 fresh sets
    (against the same reference subset, so only the samples vary)."""
    from bench.intervals import kid_bootstrap_sd
    from bench.metrics import kid_from_feats

    rng = np.random.default_rng(0)
    d, n = 16, 300
    ref = rng.standard_normal((800, d))

    def draw():
        return 0.2 + 1.1 * rng.standard_normal((n, d))

    fresh = np.std([kid_from_feats(draw(), ref, num_subsets=1) for _ in range(30)], ddof=1)
    boot = kid_bootstrap_sd(draw(), ref)
    assert 0.6 < boot / fresh < 1.6, (boot, fresh)
