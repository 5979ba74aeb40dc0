"""Official U-ViT / AdaDiff checkpoint layout: lossless round trip and identical outputs,
checked against an independent functional forward written from the official layout."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.official import config_from_official, export_official, import_official, load_official
from models.uvit import UViT

D, HEADS, P, C, IMG, N_IN, K = 32, 4, 2, 1, 8, 2, 10


def _official_state_dict(seed=0, classes=True, lte=True, mlp_time=True):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.2

    L = (IMG // P) ** 2
    sd = {"patch_embed.proj.weight": r(D, C, P, P), "patch_embed.proj.bias": r(D)}
    if mlp_time:
        sd |= {
            "time_embed.0.weight": r(4 * D, D),
            "time_embed.0.bias": r(4 * D),
            "time_embed.2.weight": r(D, 4 * D),
            "time_embed.2.bias": r(D),
        }
    if classes:
        sd["label_emb.weight"] = r(K + 1, D)  # K classes + the null class (CFG)
    sd["pos_embed"] = r(1, 1 + classes + L, D)

    def block(prefix, skip):
        b = {}
        if skip:
            b |= {f"{prefix}skip_linear.weight": r(D, 2 * D), f"{prefix}skip_linear.bias": r(D)}
        for n in ("norm1", "norm2"):
            b |= {f"{prefix}{n}.weight": 1 + r(D), f"{prefix}{n}.bias": r(D)}
        b |= {
            f"{prefix}attn.qkv.weight": r(3 * D, D),
            f"{prefix}attn.proj.weight": r(D, D),
            f"{prefix}attn.proj.bias": r(D),
            f"{prefix}mlp.fc1.weight": r(4 * D, D),
            f"{prefix}mlp.fc1.bias": r(4 * D),
            f"{prefix}mlp.fc2.weight": r(D, 4 * D),
            f"{prefix}mlp.fc2.bias": r(D),
        }
        return b

    for i in range(N_IN):
        sd |= block(f"in_blocks.{i}.", False)
    sd |= block("mid_block.", False)
    for i in range(N_IN):
        sd |= block(f"out_blocks.{i}.", True)
    sd |= {"norm.weight": 1 + r(D), "norm.bias": r(D)}
    sd |= {"decoder_pred.weight": r(P * P * C, D), "decoder_pred.bias": r(P * P * C)}
    sd |= {"final_layer.weight": r(C, C, 3, 3), "final_layer.bias": r(C)}
    if lte:  # AdaDiff: one estimator per block (official depth + 1)
        for i in range(2 * N_IN + 1):
            sd |= {f"lte_classifer.{i}.lte.weight": r(P * P * C, D)}
            sd |= {f"lte_classifer.{i}.lte.bias": r(P * P * C)}
    return sd


def _unpatchify(x):  # 'B (h w) (p1 p2 C) -> B C (h p1) (w p2)'
    g = IMG // P
    return x.reshape(-1, g, g, P, P, C).permute(0, 5, 1, 3, 2, 4).reshape(-1, C, IMG, IMG)


def _official_forward(sd, x, n, y=None):
    """Returns (eps, per-block uncertainty maps): tokens [label, time, patches]."""
    h = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=P)
    h = h.flatten(2).transpose(1, 2)
    half = D // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half) / half)
    args = n.float()[:, None] * freqs[None]
    temb = torch.cat([torch.cos(args), torch.sin(args)], -1)
    if "time_embed.0.weight" in sd:
        temb = F.linear(temb, sd["time_embed.0.weight"], sd["time_embed.0.bias"])
        temb = F.linear(F.silu(temb), sd["time_embed.2.weight"], sd["time_embed.2.bias"])
    toks = [temb[:, None], h]
    if y is not None:
        toks.insert(0, sd["label_emb.weight"][y][:, None])
    extras = len(toks) - 1
    h = torch.cat(toks, 1) + sd["pos_embed"]

    def ln(v, name):
        return F.layer_norm(v, (D,), sd[f"{name}.weight"], sd[f"{name}.bias"])

    def block(pre, h, skip=None):
        if skip is not None:
            w, b = sd[f"{pre}skip_linear.weight"], sd[f"{pre}skip_linear.bias"]
            h = F.linear(torch.cat([h, skip], -1), w, b)
        qkv = F.linear(ln(h, f"{pre}norm1"), sd[f"{pre}attn.qkv.weight"])
        B, L, _ = qkv.shape
        q, k, v = qkv.reshape(B, L, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, L, D)
        h = h + F.linear(o, sd[f"{pre}attn.proj.weight"], sd[f"{pre}attn.proj.bias"])
        m = F.gelu(
            F.linear(ln(h, f"{pre}norm2"), sd[f"{pre}mlp.fc1.weight"], sd[f"{pre}mlp.fc1.bias"])
        )
        return h + F.linear(m, sd[f"{pre}mlp.fc2.weight"], sd[f"{pre}mlp.fc2.bias"])

    hidden, skips = [], []
    for i in range(N_IN):
        h = block(f"in_blocks.{i}.", h)
        skips.append(h)
        hidden.append(h)
    h = block("mid_block.", h)
    hidden.append(h)
    for i in range(N_IN):
        h = block(f"out_blocks.{i}.", h, skips.pop())
        hidden.append(h)
    out = F.linear(ln(h, "norm"), sd["decoder_pred.weight"], sd["decoder_pred.bias"])
    eps = F.conv2d(
        _unpatchify(out[:, extras:]), sd["final_layer.weight"], sd["final_layer.bias"], padding=1
    )
    maps = []
    for i, hi in enumerate(hidden):
        if f"lte_classifer.{i}.lte.weight" in sd:
            w, b = sd[f"lte_classifer.{i}.lte.weight"], sd[f"lte_classifer.{i}.lte.bias"]
            maps.append(torch.sigmoid(_unpatchify(F.linear(hi[:, extras:], w, b))))
    return eps, maps


@pytest.mark.parametrize("classes", [True, False])
def test_official_import_gives_identical_outputs_and_exports_losslessly(classes):
    sd = _official_state_dict(classes=classes, mlp_time=classes)
    cfg = config_from_official(sd, num_heads=HEADS, img_size=IMG)
    assert cfg.depth == 2 * N_IN + 1 and cfg.exit_heads == "uem" and cfg.time_offset == 1.0
    assert cfg.num_classes == (K if classes else 0) and cfg.mlp_time_embed == classes
    model = UViT(cfg).eval()
    model.load_state_dict(import_official(sd, cfg))  # strict: every key maps
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(3, C, IMG, IMG, generator=g), torch.tensor([0.0, 499.0, 998.0])
    y = torch.tensor([0, 7, K]) if classes else None  # K = the null class
    ref_eps, ref_maps = _official_forward(sd, x, t + 1, y)  # official n = t + 1
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y), ref_eps, atol=1e-5, rtol=1e-4)
        state = model.embed(x, t, y)
        for i, ref in enumerate(ref_maps):
            model.run_block(i, state)
            torch.testing.assert_close(model.uncertainty(i, state), ref, atol=1e-6, rtol=1e-5)
    back = export_official(model)
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_load_official_reads_a_pth_with_weights_only(tmp_path):
    sd = {f"module.{k}": v for k, v in _official_state_dict(lte=False).items()}
    torch.save(sd, tmp_path / "nnet_ema.pth")
    model, cfg = load_official(tmp_path / "nnet_ema.pth", num_heads=HEADS, img_size=IMG)
    assert cfg.exit_heads == "none" and sum(p.numel() for p in model.parameters()) > 0
    with pytest.raises(ValueError, match="no checkpoint file"):
        load_official(tmp_path / "missing.pth", num_heads=HEADS, img_size=IMG)


def test_export_refuses_to_drop_a_timestep_aware_uem():
    sd = _official_state_dict()
    cfg = config_from_official(sd, num_heads=HEADS, img_size=IMG)
    model = UViT(cfg)  # fresh init: UEM time weights are not zero
    with pytest.raises(ValueError, match="drop_time=True"):
        export_official(model)
    assert export_official(model, drop_time=True)["lte_classifer.0.lte.weight"].shape == (4, D)
    with pytest.raises(ValueError, match="not an official U-ViT"):
        config_from_official({"foo": torch.zeros(1)}, num_heads=HEADS, img_size=IMG)
