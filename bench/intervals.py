"""Error bars for FID, and the verdicts that respect them.

A cell's FID is measured on a finite set of samples, so it carries sampling noise: another
seed gives another FID (1.5-2.5 apart at 1,000 digits samples, measured in this suite).
:func:`bootstrap_sd` estimates that noise from the one sample set a cell has: the
standard deviation of FID over bootstrap resamples of the generated features, the reference
statistics held fixed (Efron & Tibshirani 1993, Ch. 6). It measures the spread, not the bias
(a resample repeats samples, which raises FID a little); the interval is the measured FID
+- :data:`Z` sd (normal approximation). Where a cell has several seeds, the spread over its
seeds is used instead (:func:`bench.studies.plotting.seed_means`).

:func:`distinguishable` is the one rule every verdict uses: two FIDs differ when their gap
exceeds ``Z`` times the sd of the difference (independent samples).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = ["BOOTSTRAP", "Z", "bootstrap_sd", "distinguishable", "interval", "kid_bootstrap_sd"]

BOOTSTRAP = 200  # resamples: the sd's own relative error is ~1 / sqrt(2 * 200) = 5%
Z = 1.96  # two-sided 95% under the normal approximation


def bootstrap_sd(samples: np.ndarray, statistic: Callable[[np.ndarray], float]) -> float:
    """The sd of ``statistic`` over :data:`BOOTSTRAP` resamples (with replacement, seeded) of
    the rows of ``samples`` (for FID: the generated features, the reference held fixed by the
    statistic)."""
    rng = np.random.default_rng(0)
    n = len(samples)
    values = [statistic(samples[rng.integers(0, n, n)]) for _ in range(BOOTSTRAP)]
    return float(np.std(values, ddof=1))


def interval(value: float, sd: float) -> tuple[float, float]:
    """(low, high): ``value`` +- :data:`Z` ``sd``."""
    return value - Z * sd, value + Z * sd


def distinguishable(a: float, sd_a: float, b: float, sd_b: float) -> bool:
    """Whether FIDs ``a`` and ``b`` (with their sds) differ beyond their noise: |a - b| >
    Z * sqrt(sd_a^2 + sd_b^2). A missing sd (NaN) counts as 0."""
    sd_a = 0.0 if sd_a is None or math.isnan(sd_a) else sd_a
    sd_b = 0.0 if sd_b is None or math.isnan(sd_b) else sd_b
    return abs(a - b) > Z * math.hypot(sd_a, sd_b)


def kid_bootstrap_sd(feats: np.ndarray, ref_feats: np.ndarray) -> float:
    """KID's sampling noise: the sd over :data:`BOOTSTRAP` resamples of the generated features
    (one fixed reference subset; the kernel of :func:`bench.metrics.kid_from_feats`, computed
    once and indexed per resample, so this costs one KID, not 200)."""
    x, r = np.asarray(feats, np.float64), np.asarray(ref_feats, np.float64)
    n, d = x.shape
    rng = np.random.default_rng(0)
    y = r[rng.choice(len(r), min(len(r), 1000), replace=False)]
    m = len(y)
    kxx, kxy = (x @ x.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    yy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    values = []
    for _ in range(BOOTSTRAP):
        i = rng.integers(0, n, n)
        k = kxx[np.ix_(i, i)]
        values.append((k.sum() - np.trace(k)) / (n * (n - 1)) + yy - 2 * kxy[i].sum() / (n * m))
    return float(np.std(values, ddof=1))
