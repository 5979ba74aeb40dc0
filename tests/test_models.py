from __future__ import annotations

import pytest
import torch

from blockloop.model import forward_all
from models import MODELS, UViTConfig, make_model


@pytest.mark.parametrize("num_classes", [0, 10])
def test_layerwise_interface_equals_forward_exactly(num_classes):
    torch.manual_seed(0)
    model = make_model("micro", 8, 1, num_classes=num_classes).eval()
    x, t = torch.randn(5, 1, 8, 8), torch.rand(5) * 999
    cond = torch.randint(0, num_classes + 1, (5,)) if num_classes else None
    with torch.no_grad():
        ref = model(x, t, cond)
        state = model.embed(x, t, cond)
        for i in range(model.depth):
            model.run_block(i, state)
        assert state.skips == []  # every out-block consumed its skip
        out = model.readout(state)
        outs = forward_all(model, x, t, cond)
    assert torch.equal(out, ref)
    assert len(outs) == model.depth and torch.equal(outs[-1], ref)
    assert ref.shape == x.shape


def test_readout_after_any_block_and_compaction():
    torch.manual_seed(0)
    model = make_model("micro", 8, 1).eval()
    x, t = torch.randn(4, 1, 8, 8), torch.rand(4) * 999
    with torch.no_grad():
        full = model.embed(x, t)
        for i in range(3):
            model.run_block(i, full)
        rows = torch.tensor([0, 2])
        sub = model.embed(x[rows], t[rows])
        for i in range(3):
            model.run_block(i, sub)
        picked = full.select(rows)
    torch.testing.assert_close(picked.h, sub.h, rtol=1e-5, atol=1e-6)
    assert len(picked.skips) == 2
    assert model.readout(picked).shape == (2, 1, 8, 8)


def test_time_embedding_matters():
    torch.manual_seed(0)
    model = make_model("micro", 8, 1).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        a = model(x, torch.tensor([10.0, 10.0]))
        b = model(x, torch.tensor([900.0, 900.0]))
    assert not torch.allclose(a, b)


def test_paper_sizes_build_with_expected_shapes():
    m = make_model("uvit-s2", 32, 3)
    assert m.depth == 13 and m.cfg.embed_dim == 512 and m.cfg.num_patches == 256
    n = sum(p.numel() for p in m.parameters())
    assert 40e6 < n < 50e6  # U-ViT-S/2 has 44M parameters (Bao et al. 2023, Table 1)
    assert set(MODELS) >= {"tiny", "uvit-s2", "uvit-s4", "uvit-l2"}


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(depth=8), "odd"),
        (dict(img_size=9, patch_size=2), "multiple"),
        (dict(embed_dim=30, num_heads=4), "divisible"),
    ],
)
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        UViTConfig(**kw)


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError, match="valid choices: tiny"):
        make_model("huge", 8, 1)


def test_conditional_model_needs_cond():
    model = make_model("micro", 8, 1, num_classes=10)
    with pytest.raises(ValueError, match="class-conditional"):
        model(torch.randn(1, 1, 8, 8), torch.zeros(1))
