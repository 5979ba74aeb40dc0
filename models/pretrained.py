"""Pretrained weights from a local diffusers ``from_pretrained`` folder, read as a model the
suite measures instead of one it trains.

A folder is either a diffusers pipeline (``model_index.json`` beside ``transformer/``, and for
a latent model ``vae/``; ``scheduler/`` for its noise schedule) or a transformer folder alone.
Supported denoisers: :data:`DENOISERS` (DiT, Peebles & Xie 2023, through
:class:`models.dit.DiTAdapter`). A latent model (one with a ``vae/``, an ``AutoencoderKL``) is
sampled in its latent space (the transformer's ``in_channels x sample_size x sample_size``) and
its samples are decoded, ``x = vae.decode(z / scaling_factor)`` (Rombach et al. 2022, the
latent-diffusion convention every diffusers pipeline follows), before any image metric.

Weights load from safetensors only (``use_safetensors=True``): a pickled ``.bin`` is never
unpickled. :func:`describe` reads the configs alone (cheap: a cell is checked with it when it
is read); :func:`load_pretrained` builds the modules.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "DENOISERS",
    "LatentDecoder",
    "PretrainedFolder",
    "describe",
    "is_folder",
    "load_pretrained",
]

# The denoiser classes a folder may hold, and the architecture each is adapted as.
DENOISERS = {"DiTTransformer2DModel": "dit"}
# A Hub snapshot of the official DiTs names the legacy class; diffusers loads it as a DiT.
LEGACY = {"Transformer2DModel": "DiTTransformer2DModel"}
# What the adapter reads from a denoiser's config.
REQUIRED = ("num_attention_heads", "attention_head_dim", "in_channels", "num_layers",
            "sample_size", "patch_size", "num_embeds_ada_norm")  # fmt: skip
VAES = ("AutoencoderKL",)
# diffusers' scheduler defaults (DDPMScheduler / DDIMScheduler), used where a folder has none.
SCHEDULER_DEFAULTS = dict(
    num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear"
)
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def is_folder(model: str) -> bool:
    """Whether a cell's ``model`` names a folder (it contains a ``/``: ``./my-dit``,
    ``/data/DiT-XL-2-256``) rather than a registered size (names never do)."""
    return "/" in model


def _config(folder: Path, what: str, choices: tuple[str, ...]) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise ValueError(f"{folder}: no config.json (expected a diffusers {what} folder)")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON config ({e})") from e
    if cfg.get("_class_name") in LEGACY and LEGACY[cfg["_class_name"]] in choices:
        cfg = {**cfg, "_class_name": LEGACY[cfg["_class_name"]]}
    if cfg.get("_class_name") not in choices:
        raise ValueError(
            f"{folder}: a {cfg.get('_class_name')!r}; supported {what} classes: "
            + ", ".join(choices)
        )
    return cfg


def _beta_values(cfg: dict[str, Any]) -> Tensor:
    """The betas of a diffusers scheduler config (its ``trained_betas`` or ``beta_schedule``)."""
    if cfg.get("prediction_type", "epsilon") != "epsilon":
        raise ValueError(
            f"the scheduler predicts {cfg['prediction_type']!r}; the suite's samplers take an "
            "eps-prediction model (prediction_type 'epsilon')"
        )
    if cfg.get("rescale_betas_zero_snr"):
        raise ValueError(
            "the scheduler rescales its betas to zero terminal SNR (rescale_betas_zero_snr), "
            "which the suite's schedule does not"
        )
    if cfg.get("trained_betas"):
        return torch.tensor(cfg["trained_betas"], dtype=torch.float64)
    T, b0, b1 = cfg["num_train_timesteps"], cfg["beta_start"], cfg["beta_end"]
    kind = cfg["beta_schedule"]
    if kind == "linear":
        return torch.linspace(b0, b1, T, dtype=torch.float64)
    if kind == "scaled_linear":  # Stable Diffusion's: linear in sqrt(beta)
        return torch.linspace(b0**0.5, b1**0.5, T, dtype=torch.float64) ** 2
    if kind == "squaredcos_cap_v2":  # Nichol & Dhariwal 2021, Eq. 17 with s = 0.008
        f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + 0.008) / 1.008 * math.pi / 2)
        return (1 - f[1:] ** 2 / f[:-1] ** 2).clamp(max=0.999)
    raise ValueError(f"beta_schedule {kind!r}; supported: {', '.join(BETA_SCHEDULES)}")


@dataclass(frozen=True)
class PretrainedFolder:
    """What a folder holds, from its configs alone: the denoiser's and the VAE's config and
    the scheduler's."""

    root: Path
    transformer: Path  # the denoiser's folder (root itself, or root/transformer)
    config: dict[str, Any]
    vae_config: dict[str, Any] | None
    scheduler: dict[str, Any]

    @property
    def arch(self) -> str:
        """The architecture it is adapted as (:data:`DENOISERS`)."""
        return DENOISERS[self.config["_class_name"]]

    @property
    def size(self) -> dict[str, Any]:
        """The folder as a :data:`models.MODELS` size entry (arch, patch, width, depth, heads)."""
        c = self.config
        width = c["num_attention_heads"] * c["attention_head_dim"]
        return dict(arch=self.arch, patch_size=c["patch_size"], embed_dim=width,
                    depth=c["num_layers"], num_heads=c["num_attention_heads"])  # fmt: skip

    @property
    def num_classes(self) -> int:
        """The class labels the denoiser takes (its null class is this number)."""
        return int(self.config.get("num_embeds_ada_norm") or 0)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of what the denoiser samples."""
        s = self.config["sample_size"]
        return (self.config["in_channels"], s, s)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images it makes: the VAE's output size, or the latent shape."""
        if self.vae_config is None:
            return self.latent_shape
        factor = 2 ** (len(self.vae_config["block_out_channels"]) - 1)
        s = self.config["sample_size"] * factor
        return (self.vae_config.get("out_channels", 3), s, s)

    def betas(self) -> Tensor:
        """The noise schedule it was trained with (float64), from ``scheduler/``."""
        return _beta_values({**SCHEDULER_DEFAULTS, **self.scheduler})

    @property
    def key(self) -> str:
        """``pretrained-<hash>``: a hash of every config and weight file it loads (so a record
        made before the weights changed is told apart)."""
        stats = tuple((p, *_stat(p)) for p in _loaded_files(self))
        return "pretrained-" + _fingerprint(self.root, stats)


def _loaded_files(spec: PretrainedFolder) -> list[Path]:
    folders = [spec.transformer] + ([spec.root / "vae"] if spec.vae_config else [])
    files = [
        p for f in folders for p in sorted(f.iterdir()) if p.suffix in (".json", ".safetensors")
    ]
    sched = spec.root / "scheduler" / "scheduler_config.json"
    return files + ([sched] if sched.is_file() else [])


def _stat(path: Path) -> tuple[int, ...]:
    st = path.stat()
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


@functools.lru_cache(maxsize=16)
def _fingerprint(root: Path, stats: tuple[tuple, ...]) -> str:
    """The content hash of the files in ``stats`` (path, size, times, inode: the cache's key,
    so a rewritten file is hashed again)."""
    h = hashlib.sha256()
    for path, *_ in stats:
        h.update(str(path.relative_to(root)).encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def describe(folder: str | Path) -> PretrainedFolder:
    """The folder's configs; a ``ValueError`` naming what is missing or the supported classes
    for a missing folder, another class, a config the adapter cannot read, a non-eps
    scheduler or an unknown beta schedule. A relative path is relative to the working
    directory (of every worker, under a distributed executor)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder (a model that contains '/' is a local "
                         "diffusers from_pretrained folder)")  # fmt: skip
    transformer = root / "transformer" if (root / "transformer").is_dir() else root
    config = _config(transformer, "denoiser", tuple(DENOISERS))
    missing = [k for k in REQUIRED if not config.get(k)]
    if missing or config.get("norm_type") != "ada_norm_zero":
        raise ValueError(
            f"{transformer}: the suite runs class-conditional adaLN-Zero DiTs (norm_type "
            f"'ada_norm_zero', num_embeds_ada_norm > 0); this config has norm_type "
            f"{config.get('norm_type')!r} and lacks {missing or 'nothing else'}"
        )
    vae = None
    if (root / "vae").is_dir():
        vae = _config(root / "vae", "VAE", VAES)
        if not vae.get("block_out_channels"):
            raise ValueError(f"{root / 'vae'}: its config has no block_out_channels")
    sched_path = root / "scheduler" / "scheduler_config.json"
    scheduler = json.loads(sched_path.read_text()) if sched_path.is_file() else {}
    spec = PretrainedFolder(root, transformer, config, vae, scheduler)
    spec.betas()  # the schedule's checks
    return spec


class LatentDecoder(nn.Module):
    """A diffusers ``AutoencoderKL``'s decoder: latents (B, C, h, w) to images in [-1, 1]."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        self.scaling = float(vae.config.get("scaling_factor", 0.18215))

    @torch.inference_mode()
    def forward(self, z: Tensor, batch: int = 64) -> Tensor:
        """Decode ``z`` in batches of ``batch`` on the VAE's device; the images on ``z``'s."""
        dev = next(self.vae.parameters()).device
        parts = [
            self.vae.decode(c.to(dev, torch.float32) / self.scaling).sample.to(z.device)
            for c in z.split(batch)
        ]
        return torch.cat(parts).clamp(-1, 1)


def load_pretrained(spec: PretrainedFolder) -> tuple[nn.Module, LatentDecoder | None]:
    """The folder's denoiser as a layer-wise model (eval mode) and its VAE decoder (None for
    a pixel-space model). Safetensors weights only."""
    from diffusers import AutoencoderKL, DiTTransformer2DModel

    from models.dit import DiTAdapter

    try:
        dit = DiTTransformer2DModel.from_pretrained(
            spec.transformer, use_safetensors=True, low_cpu_mem_usage=False
        )
        vae = None
        if spec.vae_config is not None:
            vae = AutoencoderKL.from_pretrained(
                spec.root / "vae", use_safetensors=True, low_cpu_mem_usage=False
            )
    except OSError as e:
        raise ValueError(f"{spec.root}: the weights do not load ({e}); the suite reads "
                         "safetensors only") from e  # fmt: skip
    model = DiTAdapter(dit.eval())  # class-conditional (describe checked); unguided: null class
    return model, None if vae is None else LatentDecoder(vae.eval())
