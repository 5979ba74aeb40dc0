"""Exit heads as modules (models.heads): the U-ViT's keys and maps unchanged, a diffusers DiT
given UEM / LTE heads and measured with the policies that read them, bad attachments refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("diffusers")

from adapters import check_flop_meter, jittered

from adaptive.policies import make_policy
from bench.cell import Cell
from bench.train import TrainConfig, load_or_train
from blockloop.executor import EarlyExitDenoiser
from blockloop.model import capabilities
from models import make_model
from models.dit import DiTAdapter, tiny_dit
from models.heads import (
    LTEHead,
    UEMHeads,
    attach_exit_heads,
    exit_heads_of,
    lte_score,
    uncertainty,
)
from models.layout import unpatchify

T = 1000


def _inputs(b: int = 6):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 1, 8, 8, generator=g)
    return x, torch.linspace(0, T - 1, b), torch.arange(b) % 11


def _headed_dit(kind: str) -> nn.Module:
    torch.manual_seed(0)
    return jittered(attach_exit_heads(tiny_dit(), kind))


def test_the_uvit_keeps_its_checkpoint_keys_and_its_uem_map():
    uem = make_model("micro", 8, 1, exit_heads="uem").eval()
    keys = {k for k in uem.state_dict() if k.startswith(("uem.", "lte."))}
    assert keys == {f"uem.{i}.{w}" for i in range(uem.depth) for w in ("weight", "bias")}
    assert uem.state_dict()["uem.0.weight"].shape == (4, 2 * 32)  # p*p*C from [token ; temb]
    lte = make_model("micro", 8, 1, exit_heads="lte")
    assert {k for k in lte.state_dict() if k.startswith(("uem.", "lte."))} == {
        "lte.weight",
        "lte.bias",
    }
    x, t, _ = _inputs(3)
    with torch.no_grad():
        state = uem.run_block(0, uem.embed(x, t))
        patches = state.h[:, 1:]  # after the time token
        temb = state.temb[:, None].expand_as(patches)
        by_hand = torch.sigmoid(unpatchify(uem.uem[0](torch.cat([patches, temb], -1)), 2, 1))
        torch.testing.assert_close(uncertainty(uem, 0, state), by_hand, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["uem", "lte"])
def test_a_dit_given_heads_has_the_capability_and_reads_them(kind):
    model = _headed_dit(kind)
    assert exit_heads_of(model) == kind and model.exit_heads == kind
    assert capabilities(model) == frozenset({"block_parts", "cache_signal", kind})
    x, t, y = _inputs()
    state = model.run_block(0, model.embed(x, t, y))
    out = uncertainty(model, 0, state) if kind == "uem" else lte_score(model, state)
    assert out.shape == ((6, 1, 8, 8) if kind == "uem" else (6,))
    assert ((out > 0) & (out < 1)).all() and out.std() > 0  # time and content reach the map
    # Detached inputs: the heads never train the backbone.
    out.sum().backward()
    assert all(p.grad is None for p in model.dit.parameters())
    heads = model.uem[0] if kind == "uem" else model.lte  # block 0's UEM
    assert all(p.grad is not None for p in heads.parameters())


@pytest.mark.parametrize(("policy", "knob"), [("uem", 0.99), ("berxit", 0.99)])
def test_the_flop_meter_counts_the_heads_on_a_dit(policy, knob):
    model = _headed_dit("uem" if policy == "uem" else "lte")
    check_flop_meter(model, policy, knob, None, *_inputs(8))


def test_geometry_read_from_the_model_matches_the_adapters_own():
    dit = tiny_dit().dit
    built = DiTAdapter(dit, exit_heads="uem")
    inferred = attach_exit_heads(DiTAdapter(dit), "uem")
    assert [p.shape for p in built.uem.parameters()] == [p.shape for p in inferred.uem.parameters()]
    assert isinstance(built.uem, UEMHeads) and built.uem.patch == 2


def test_bad_attachments_say_what_is_wrong():
    with pytest.raises(ValueError, match="unknown exit heads 'dydit'; valid choices: none, uem"):
        attach_exit_heads(tiny_dit(), "dydit")
    with pytest.raises(ValueError, match="Linear cannot carry 'uem' exit heads: it has no"):
        attach_exit_heads(nn.Linear(2, 2), "uem")
    with pytest.raises(ValueError, match="has no UEM heads"):
        uncertainty(tiny_dit(), 0, None)
    with pytest.raises(ValueError, match="has no LTE head"):
        lte_score(tiny_dit(), None)
    assert exit_heads_of(attach_exit_heads(_headed_dit("uem"), "none")) == "none"
    assert isinstance(LTEHead(8), nn.Linear)


@pytest.mark.parametrize(("recipe", "kind"), [("uem", "uem"), ("berxit", "lte")])
def test_the_registered_dit_trains_its_heads_with_the_recipes(cache, recipe, kind):
    cfg = TrainConfig(model="dit-tiny", steps=3, batch_size=8, recipe=recipe, finetune_steps=2)
    tuned = load_or_train(cfg, cache, progress=False)  # fine-tuned from `full`, heads fresh
    assert exit_heads_of(tuned.model) == kind and tuned.meta["steps"] == 2
    ex = EarlyExitDenoiser(tuned.model, make_policy(recipe, 0.5), T)
    x, t, _ = _inputs(4)
    with torch.inference_mode():
        assert torch.isfinite(ex(x, t)).all()
    Cell(model="dit-tiny", recipe=recipe, policy=recipe, knob=0.5)  # a sweep may ask for it


def test_a_model_that_claims_heads_without_the_modules_has_none():
    class Claims(nn.Module):
        exit_heads = "uem"

    assert exit_heads_of(Claims()) == "none"
    assert exit_heads_of(make_model("micro", 8, 1, exit_heads="dydit")) == "dydit"
