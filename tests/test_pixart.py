"""A text-conditional model from outside the package through the layer-wise model contract: a
tiny random diffusers PixArt (adaLN-single, cross-attention, learned sigma) under the executor,
the FLOP meter, the branch caches and classifier-free guidance."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from adapters import check_flop_meter, jittered

import samplers
from adaptive.policies import make_policy
from blockloop.executor import EarlyExitDenoiser
from blockloop.model import LayerwiseModel, capabilities
from models.heads import attach_exit_heads
from models.pixart import PixArtAdapter, load_pixart, tiny_pixart
from samplers import ClassifierFreeGuidance

T = 1000


def _pixart() -> PixArtAdapter:
    torch.manual_seed(0)
    return jittered(tiny_pixart())


def _inputs(b: int = 6):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 1, 8, 8, generator=g)
    return x, torch.linspace(0, T - 1, b), torch.randn(b, 8, 12, generator=g)


def test_the_pixart_adapter_keeps_the_contract_and_equals_pixart():
    model = _pixart()
    assert isinstance(model, LayerwiseModel) and model.num_classes == 0
    assert capabilities(model) == frozenset({"block_parts", "cache_signal"})
    x, t, c = _inputs()
    ex = EarlyExitDenoiser(model, make_policy("full"), T)
    with torch.inference_mode():
        ours = ex(x, t, c)
        theirs = model.pixart(x, encoder_hidden_states=c, timestep=t).sample[:, :1]  # eps half
    assert (ours - theirs).abs().max() <= 1e-6 and theirs.abs().mean() > 0.1


def test_block_parts_run_the_block_and_reuse_what_they_are_given():
    model = _pixart()
    x, t, c = _inputs()
    with torch.inference_mode():
        plain, parts = model.embed(x, t, c), model.embed(x, t, c)
        branches = [(model.run_block(i, plain), model.block_parts(i, parts))[1] for i in range(3)]
        assert (plain.h - parts.h).abs().max() <= 1e-6
        again = model.embed(x, t, c)
        for i, (a, m) in enumerate(branches):
            model.block_parts(i, again, a, m)
        assert torch.equal(again.h, parts.h)


@pytest.mark.parametrize(
    ("policy", "knob", "cache"),
    [("full", None, None), ("static", 1, None), ("full", None, "fora"), ("full", None, "teacache")],
)
def test_the_flop_meter_matches_flop_counter_on_pixart(policy, knob, cache):
    check_flop_meter(_pixart(), policy, knob, cache, *_inputs(8))


def test_guided_sampling_runs_through_the_executor_with_the_null_caption():
    model = _pixart()
    _, _, c = _inputs(4)
    ex = EarlyExitDenoiser(model, make_policy("full"), T)
    denoiser = ClassifierFreeGuidance(ex, 3.0, model.null_cond())
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        out = samplers.sample(
            "ddim", denoiser, samplers.make_schedule("linear"), (4, 1, 8, 8), 3,
            generator=gen, cond=c,
        )  # fmt: skip
    assert out.samples.shape == (4, 1, 8, 8) and torch.isfinite(out.samples).all()


def test_a_from_pretrained_folder_round_trips_and_bad_folders_say_why(tmp_path):
    model = _pixart()
    model.pixart.save_pretrained(tmp_path / "pipe" / "transformer")
    loaded = load_pixart(tmp_path / "pipe", model.null_cond())
    x, t, c = _inputs()
    with torch.inference_mode():
        assert torch.equal(loaded(x, t, c), model(x, t, c))
    with pytest.raises(ValueError, match=r"no config\.json"):
        load_pixart(tmp_path / "missing", model.null_cond())
    (tmp_path / "dit").mkdir()
    (tmp_path / "dit" / "config.json").write_text('{"_class_name": "DiTTransformer2DModel"}')
    with pytest.raises(ValueError, match="'DiTTransformer2DModel', not a PixArtTransformer2DModel"):
        load_pixart(tmp_path / "dit", model.null_cond())
    with pytest.raises(ValueError, match="resolution / aspect-ratio conditioning"):
        tiny_pixart(use_additional_conditions=True)


def test_pixart_carries_exit_heads_and_teacaches_signal_with_their_flops_counted():
    model = _pixart()
    uem = jittered(attach_exit_heads(tiny_pixart(), "uem"))
    assert capabilities(uem) == frozenset({"block_parts", "cache_signal", "uem"})
    check_flop_meter(uem, "uem", 0.99, None, *_inputs(8))
    check_flop_meter(model, "full", None, "teacache-batch", *_inputs(8), signal="modulated")
