"""Import and export of the official U-ViT and AdaDiff checkpoints.

Key layouts (read from the public releases' model definitions, ``libs/uvit.py`` of
github.com/baofff/U-ViT and github.com/Tangshengku/AdaDiff):

==========================================  ==========================================
official                                    this package (:class:`models.UViT`)
==========================================  ==========================================
``patch_embed.proj.{weight,bias}``          ``patch_embed.{weight,bias}``
``time_embed.{0,2}.*`` (``mlp_time_embed``)  ``time_embed.{0,2}.*``
``label_emb.weight`` (K + 1 rows)           ``label_emb.weight`` (``num_classes`` = K)
``pos_embed`` tokens [label, time, patches]  ``pos_embed`` tokens [time, label, patches]
``{in,out}_blocks.i.mlp.fc{1,2}.*``         ``{in,out}_blocks.i.mlp.{0,2}.*``
``depth`` (in + out blocks)                 ``depth`` (in + mid + out blocks) = official + 1
``lte_classifer.i.lte.*`` (AdaDiff, D->P)    ``uem.i.*`` (D + D -> P, time part zero)
everything else (norms, attn, skips, head)  same names
==========================================  ==========================================

Token order does not change the function (attention has no mask; each token carries its own
position embedding), so swapping the first two ``pos_embed`` rows is exact. AdaDiff's
per-layer estimator reads the detached patch tokens only; ours (DeeDiff's timestep-aware UEM)
also reads the time embedding, so an imported estimator gets zero weights on that half and
computes the same map. Exporting a UEM whose time weights are not zero would lose them, so it
is refused unless ``drop_time=True``.

Official checkpoints are ``torch.save`` pickles (``nnet_ema.pth``); they are read with
``torch.load(weights_only=True)``, which loads tensors and never executes code. The official
networks take timesteps ``n`` in ``1..N`` where this package passes ``t = n - 1``; imported
configs set ``time_offset=1`` so the same weights see the same inputs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import Tensor

from models.uvit import UViT, UViTConfig

__all__ = ["config_from_official", "export_official", "import_official", "load_official"]

_MLP = {"mlp.fc1.": "mlp.0.", "mlp.fc2.": "mlp.2."}


def config_from_official(sd: dict[str, Tensor], num_heads: int, img_size: int) -> UViTConfig:
    """The :class:`UViTConfig` of an official state dict (heads and image size are not
    recoverable from weights, so they are given)."""
    try:
        w = sd["patch_embed.proj.weight"]  # (D, C, p, p)
    except KeyError as e:
        raise ValueError("not an official U-ViT state dict: no patch_embed.proj.weight") from e
    D, C, p = w.shape[0], w.shape[1], w.shape[2]
    n_in = len({k.split(".")[1] for k in sd if k.startswith("in_blocks.")})
    hidden = sd["in_blocks.0.mlp.fc1.weight"].shape[0] if n_in else 4 * D
    labels = sd.get("label_emb.weight")
    heads = "uem" if any(k.startswith("lte_classifer.") for k in sd) else "none"
    return UViTConfig(
        img_size=img_size,
        in_chans=C,
        patch_size=p,
        embed_dim=D,
        depth=2 * n_in + 1,
        num_heads=num_heads,
        mlp_ratio=hidden / D,
        num_classes=0 if labels is None else labels.shape[0] - 1,
        qkv_bias="in_blocks.0.attn.qkv.bias" in sd,
        mlp_time_embed="time_embed.0.weight" in sd,
        conv_out="final_layer.weight" in sd,
        exit_heads=heads,
        time_offset=1.0,
    )


def import_official(sd: dict[str, Tensor], cfg: UViTConfig) -> dict[str, Tensor]:
    """An official (U-ViT or AdaDiff) state dict in this package's layout for ``cfg``."""
    out: dict[str, Tensor] = {}
    D = cfg.embed_dim
    for k, v in sd.items():
        if k.startswith("lte_classifer."):
            i = int(k.split(".")[1])  # one per block: AdaDiff's depth + 1 = our depth
            kind = k.rsplit(".", 1)[1]
            if kind == "weight":  # (P, D) -> (P, 2D): zero weights on the time embedding
                v = torch.cat([v, torch.zeros(v.shape[0], D, dtype=v.dtype)], dim=1)
            out[f"uem.{i}.{kind}"] = v
            continue
        name = k.replace("patch_embed.proj.", "patch_embed.")
        for a, b in _MLP.items():
            name = name.replace(a, b)
        if name == "pos_embed" and cfg.num_classes > 0:
            v = v.clone()
            v[:, [0, 1]] = v[:, [1, 0]]  # [label, time] -> [time, label]
        out[name] = v
    return out


def export_official(model: UViT, drop_time: bool = False) -> dict[str, Tensor]:
    """This model's weights in the official layout (AdaDiff's when it has UEM heads)."""
    cfg = model.cfg
    if cfg.exit_heads == "lte":
        raise ValueError("BERxiT's LTE head has no counterpart in the official releases")
    D = cfg.embed_dim
    out: dict[str, Tensor] = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if k.startswith("uem."):
            i, kind = k.split(".")[1], k.rsplit(".", 1)[1]
            if kind == "weight":
                if not drop_time and v[:, D:].abs().max() > 0:
                    raise ValueError(
                        "this UEM reads the time embedding (DeeDiff's timestep-aware estimator);"
                        " AdaDiff's layout cannot hold those weights: pass drop_time=True to"
                        " export without them"
                    )
                v = v[:, :D]
            out[f"lte_classifer.{i}.lte.{kind}"] = v.contiguous()
            continue
        name = k.replace("patch_embed.", "patch_embed.proj.", 1) if k.startswith("patch_") else k
        for a, b in _MLP.items():
            name = name.replace(b, a)
        if name == "pos_embed" and cfg.num_classes > 0:
            v = v.clone()
            v[:, [0, 1]] = v[:, [1, 0]]
        out[name] = v
    return out


def load_official(
    path: str | Path, num_heads: int, img_size: int, **overrides
) -> tuple[UViT, UViTConfig]:
    """A :class:`UViT` with the weights of an official checkpoint file (``.pth`` read with
    ``weights_only=True``, or ``.safetensors``). ``overrides`` replace config fields; with
    ``exit_heads="uem"`` on a plain U-ViT checkpoint the UEMs start from their initialisation."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no checkpoint file at {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # refused pickle (weights_only), truncated or foreign file
        raise ValueError(
            f"{path} was refused: not a plain tensor checkpoint or .safetensors file "
            f"({type(e).__name__}; nothing in it was run)"
        ) from e
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}  # saved from DataParallel
    cfg = dataclasses.replace(config_from_official(sd, num_heads, img_size), **overrides)
    model = UViT(cfg)
    missing, unexpected = model.load_state_dict(import_official(sd, cfg), strict=False)
    if unexpected or any(not k.startswith("uem.") for k in missing):
        raise ValueError(
            f"{path} does not fit {cfg}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.eval(), cfg
