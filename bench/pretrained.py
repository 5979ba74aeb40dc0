"""A cell's pretrained weights: a local diffusers ``from_pretrained`` folder named as the cell's
``model`` (:mod:`models.pretrained`), loaded in place of a checkpoint the suite trains.

:class:`PretrainedModel` stands where :class:`bench.trainconfig.TrainedModel` does in a
pipeline (``model``, ``schedule``, ``key``) and adds :meth:`~PretrainedModel.decode`, the
latent model's VAE decoder the pipeline applies to its samples before FID and the paired
metrics. FLOPs and the side-by-side wall ratio count the denoiser only (what every method here
changes), and so does ``seconds_per_image`` (the decode, the same for every method, is
left out).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bench.cellcheck import check_pretrained
from models.pretrained import LatentDecoder, describe, load_pretrained

__all__ = ["PretrainedModel", "load_pretrained_model"]


@dataclass
class PretrainedModel:
    """A folder's denoiser (eval mode, on the cell's device), its schedule and VAE decoder."""

    model: nn.Module
    schedule: object  # samplers.VPSchedule
    key: str  # "pretrained-<fingerprint of its configs and weights>"
    decoder: LatentDecoder | None
    cached: bool = True  # nothing was trained

    def decode(self, samples: Tensor) -> Tensor:
        """Images in [-1, 1] of the denoiser's samples: decoded by the VAE for a latent
        model, the samples themselves otherwise."""
        return samples if self.decoder is None else self.decoder(samples)


def load_pretrained_model(cell, device: torch.device) -> PretrainedModel:
    """The pretrained model ``cell`` names (checked as a cell checks it) on ``device``."""
    schedule = check_pretrained(cell)
    spec = describe(cell.model)
    model, decoder = load_pretrained(spec)
    model.to(device)
    if decoder is not None:
        decoder.to(device)
    return PretrainedModel(model, schedule, spec.key, decoder)
