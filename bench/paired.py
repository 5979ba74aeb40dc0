"""Paired fidelity: how far each compressed sample is from the uncompressed pipeline's sample
drawn from the same initial noise.

A cell's *reference* is the same data, model size, conditioning, sampler, steps, sample count
and seed with nothing compressed: the `full` recipe's model, unpruned, no exit, no cache. Its
samples are generated once and cached (artifact kind ``reference-samples``, keyed by the
reference cell), so every cell of a sweep that shares a reference is compared with the same
images. Per sample pair the record gets

- PSNR and SSIM (scikit-image's ``peak_signal_noise_ratio`` / ``structural_similarity`` on
  images in [-1, 1], data range 2; SSIM with the largest odd window that fits, 7 on 8x8);
- a learned-feature distance in the spirit of LPIPS (Zhang et al. 2018), stated as such: the
  squared L2 distance between the unit-normalised features of the offline extractor (the
  suite's CNN, not LPIPS's network or its learned weights);

as means and standard deviations over the samples, plus the share of pairs that are identical
(PSNR infinite; left out of the PSNR mean). A paired measure has a fraction of FID's seed
variance and answers the question a user asks of a compression: how much does my image change?
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bench.cache import ArtifactCache
from bench.cell import Cell, cell_model_key
from bench.pipeline import build_pipeline
from models.pretrained import is_folder

__all__ = [
    "PAIRED_FIELDS",
    "REFERENCE_FIELDS",
    "paired_fidelity",
    "paired_metrics",
    "reference_cell",
    "reference_samples",
]

# What a record holds of the paired comparison (None where the samples are nonfinite).
PAIRED_FIELDS = (
    "psnr",
    "psnr_std",
    "ssim",
    "ssim_std",
    "feat_dist",
    "feat_dist_std",
    "identical_share",
    "paired_reference",
)

# The fields a cell shares with its uncompressed reference; the rest are reset to defaults.
REFERENCE_FIELDS = (
    "dataset",
    "model",
    "sampler",
    "steps",
    "spacing",
    "end",
    "order",
    "lower_order_final",
    "taylor_3m",
    "guidance",
    "text",
    "prompts",
    "samples",
    "seed",
    "device",
    "autocast",
)


def reference_cell(cell: Cell) -> Cell:
    """The uncompressed pipeline ``cell`` is compared with (see the module docstring)."""
    return Cell(**{name: getattr(cell, name) for name in REFERENCE_FIELDS})


def reference_samples(cell: Cell, cache: ArtifactCache, data=None) -> Tensor:
    """The reference's samples (the same initial noise as ``cell``'s), from the cache or
    generated once and cached."""
    ref = reference_cell(cell)

    def build() -> tuple[dict[str, Tensor], dict[str, Any]]:
        pipe = build_pipeline(ref, cache, data=data)
        images, _ = pipe.sample(ref.samples, ref.seed)
        return {"images": images.float().cpu()}, {"cell": ref.key, "label": ref.label()}

    key = ref.key  # a folder's weights may change under the same path: its hash joins the key
    key += f"-{cell_model_key(ref)}" if is_folder(ref.model) else ""
    tensors, _, _ = cache.get_or_build("reference-samples", key, build)
    return tensors["images"]


def _ssim_window(h: int, w: int) -> int:
    side = min(h, w, 7)
    return side if side % 2 else side - 1


def _psnr_ssim(images: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    n, c, h, w = images.shape
    win = _ssim_window(h, w)
    psnr, ssim = np.empty(n), np.empty(n)
    for i in range(n):
        a, b = reference[i], images[i]
        psnr[i] = (
            math.inf if np.array_equal(a, b) else peak_signal_noise_ratio(a, b, data_range=2.0)
        )
        if c == 1:
            ssim[i] = structural_similarity(a[0], b[0], data_range=2.0, win_size=win)
        else:
            ssim[i] = structural_similarity(a, b, data_range=2.0, win_size=win, channel_axis=0)
    return psnr, ssim


def _feature_distance(images: Tensor, reference: Tensor, extractor) -> np.ndarray:
    fa = torch.nn.functional.normalize(extractor(images.float()), dim=1)
    fb = torch.nn.functional.normalize(extractor(reference.float()), dim=1)
    return (fa - fb).pow(2).sum(1).cpu().numpy()


def paired_metrics(images: Tensor, reference: Tensor, extractor) -> dict[str, float]:
    """Mean and standard deviation over sample pairs of PSNR (dB), SSIM and the feature
    distance, and the share of identical pairs. ``images`` and ``reference``: (N, C, H, W) in
    [-1, 1], pair i from the same initial noise."""
    if images.shape != reference.shape:
        raise ValueError(
            f"paired metrics need samples of the same shape: {tuple(images.shape)} vs "
            f"{tuple(reference.shape)}"
        )
    a = images.clamp(-1, 1).float().cpu()
    b = reference.clamp(-1, 1).float().cpu()
    psnr, ssim = _psnr_ssim(a.numpy().astype(np.float64), b.numpy().astype(np.float64))
    feat = _feature_distance(a, b, extractor)
    finite = psnr[np.isfinite(psnr)]
    return {
        "psnr": float(finite.mean()) if finite.size else None,
        "psnr_std": float(finite.std()) if finite.size else None,
        "ssim": float(ssim.mean()),
        "ssim_std": float(ssim.std()),
        "feat_dist": float(feat.mean()),
        "feat_dist_std": float(feat.std()),
        "identical_share": float(1 - finite.size / psnr.size),
    }


def paired_fidelity(cell: Cell, images: Tensor, cache: ArtifactCache, data=None) -> dict[str, Any]:
    """The record fields of ``cell``'s paired comparison with its reference: a cell that is
    its own reference is compared with its own samples (no second run)."""
    from bench.metrics import get_extractor

    ref = reference_cell(cell)
    reference = images if ref.key == cell.key else reference_samples(cell, cache, data)
    extractor = get_extractor("cnn", cell.dataset, cache, data=data)
    return {**paired_metrics(images, reference, extractor), "paired_reference": ref.key}
