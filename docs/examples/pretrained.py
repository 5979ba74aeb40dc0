"""Your own weights: a cell whose ``model`` is a local diffusers ``from_pretrained`` folder.

A ``model`` that contains a ``/`` names a folder instead of a registered size: a diffusers
pipeline folder (``transformer/``, and for a latent model ``vae/``; ``scheduler/`` for its
noise schedule) or a transformer folder alone. The suite loads it as it is (safetensors only),
samples in its latent space, decodes with its VAE before FID, and measures exits and caches on
it like on its own models. Here the folder is a tiny random latent DiT written by diffusers
itself (so it runs offline); with a real one, point ``model`` at its folder, e.g. one made by
``DiTPipeline.from_pretrained("facebook/DiT-XL-2-256").save_pretrained("dit-xl")`` online.

Runs in seconds: ``python docs/examples/pretrained.py``.
"""

import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

from bench.cache import ArtifactCache
from bench.cell import Cell
from bench.run import run_cell


def tiny_latent_dit(folder: Path) -> None:
    """A random DiT pipeline for 8x8 one-channel images: a VAE halving each side makes 4x4x4
    latents; the DiT reads them as 16 tokens (patch 1), 10 classes, learned sigma."""
    torch.manual_seed(0)
    dit = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
        num_layers=3, sample_size=4, patch_size=1, num_embeds_ada_norm=10, norm_num_groups=1,
    )  # fmt: skip
    vae = AutoencoderKL(
        in_channels=1, out_channels=1, latent_channels=4, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8, layers_per_block=1, sample_size=8,
    )  # fmt: skip
    pipe = DiTPipeline(transformer=dit, vae=vae, scheduler=DDIMScheduler())
    pipe.save_pretrained(folder)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "my-dit"
        tiny_latent_dit(folder)
        # The digits data set is the FID reference: the decoded images must be 1x8x8.
        cell = Cell(model=str(folder), policy="ase", target_flop_ratio=0.7, steps=4, samples=32)
        rec = run_cell(cell, ArtifactCache(Path(tmp) / "cache"))
        print(f"cell: {rec['label']}; model {rec['model_key']}, FID {rec['fid']:.1f} (random)")
        print(f"FLOP ratio per call {rec['flop_ratio_per_call']:.3f}, PSNR {rec['psnr']:.1f} dB")


if __name__ == "__main__":
    main()
