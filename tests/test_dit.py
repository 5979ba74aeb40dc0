"""A model from outside the package through the layer-wise model contract (blockloop.model):
a tiny random diffusers DiT (adaLN-Zero, learned sigma) under the executor, the FLOP meter,
the caches and the calibrator."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("diffusers")

from adapters import check_flop_meter, jittered

import samplers
from adaptive.calibrate import CalibrationRun, calibrate
from adaptive.policies import make_policy
from bench.cell import Cell
from bench.prune import PruneConfig, load_or_prune
from bench.train import TrainConfig, load_or_train
from blockloop.executor import EarlyExitDenoiser
from blockloop.model import LayerwiseModel, capabilities, forward_all
from caching import make_cache
from models.dit import DiTAdapter, load_dit, tiny_dit

T = 1000


def _dit(depth: int = 4) -> DiTAdapter:
    torch.manual_seed(0)
    return jittered(tiny_dit(num_layers=depth))


def _inputs(b: int = 6):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 1, 8, 8, generator=g)
    return x, torch.linspace(0, T - 1, b), torch.arange(b) % 11  # label 10: the null class


def test_the_dit_adapter_keeps_the_contract_and_equals_the_dit():
    model = _dit()
    assert isinstance(model, LayerwiseModel)
    assert capabilities(model) == frozenset({"block_parts", "cache_signal"})  # no skips, heads
    x, t, y = _inputs()
    ex = EarlyExitDenoiser(model, make_policy("full"), T)
    with torch.inference_mode():
        ours = ex(x, t, y)
        theirs = model.dit(x, timestep=t, class_labels=y).sample[:, :1]  # the eps half
    assert (ours - theirs).abs().max() <= 1e-6 and theirs.abs().mean() > 0.1


@pytest.mark.parametrize(
    ("policy", "knob", "cache"),
    [
        ("full", None, None),
        ("static", 1, None),
        ("calm", 0.9, None),
        ("full", None, "teacache"),
        ("full", None, "fora"),
        ("full", None, "taylorseer"),
    ],
)
def test_the_flop_meter_matches_flop_counter_on_a_dit(policy, knob, cache):
    check_flop_meter(_dit(), policy, knob, cache, *_inputs(8))


def test_calibration_lands_on_the_target_on_a_dit():
    model = _dit(depth=8)
    schedule = samplers.make_schedule("linear")
    run = CalibrationRun(steps=8, n=8, cond=torch.arange(8) % 10)
    cal = calibrate(model, schedule, "ase", 0.65, run=run)
    assert abs(cal.achieved - 0.65) <= 0.02, cal.history


@pytest.mark.parametrize(("cache", "missing"), [("deepcache", "long_skips")])
def test_a_cache_that_needs_what_the_model_lacks_says_so(cache, missing):
    with pytest.raises(ValueError, match=f"{cache}.*DiTAdapter.*{missing}"):
        EarlyExitDenoiser(_dit(), make_policy("full"), T, cache=make_cache(cache))


def test_uem_exits_need_uem_heads_on_a_dit():
    with pytest.raises(ValueError, match="needs a model trained with its heads"):
        EarlyExitDenoiser(_dit(), make_policy("uem", 0.5), T)


def test_a_from_pretrained_folder_round_trips_and_bad_folders_say_why(tmp_path):
    model = _dit()
    model.dit.save_pretrained(tmp_path / "pipe" / "transformer")
    loaded = load_dit(tmp_path / "pipe")
    x, t, y = _inputs()
    with torch.inference_mode():
        assert torch.equal(loaded(x, t, y), model(x, t, y))
    with pytest.raises(ValueError, match=r"no config\.json"):
        load_dit(tmp_path / "missing")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    with pytest.raises(ValueError, match="'UNet2DModel', not a DiTTransformer2DModel"):
        load_dit(tmp_path / "other")


def test_block_parts_run_the_block_and_reuse_what_they_are_given():
    model = _dit()
    x, t, y = _inputs()
    with torch.inference_mode():
        plain, parts = model.embed(x, t, y), model.embed(x, t, y)
        branches = []
        for i in range(model.depth):
            model.run_block(i, plain)
            branches.append(model.block_parts(i, parts))
        assert (plain.h - parts.h).abs().max() <= 1e-6 and plain.h.abs().mean() > 0.1
        # Reusing both branches of every block reproduces the run that computed them.
        again = model.embed(x, t, y)
        for i, (a, m) in enumerate(branches):
            assert model.block_parts(i, again, a, m) == (a, m)
        assert torch.equal(again.h, parts.h)


def test_fora_computing_every_call_equals_the_dit():
    model = _dit()
    x, t, y = _inputs()
    ex = EarlyExitDenoiser(model, make_policy("full"), T, cache=make_cache("fora", 1.0))
    with torch.inference_mode():
        for step in range(3):
            tt = t * (1 - step / 3)
            assert (ex(x, tt, y) - model(x, tt, y)).abs().max() <= 1e-6


def test_the_registered_dit_trains_with_the_suites_recipes(cache):
    full = load_or_train(
        TrainConfig(model="dit-tiny", steps=3, batch_size=8), cache, progress=False
    )
    assert isinstance(full.model, DiTAdapter) and full.model.num_classes == 0
    assert sum(p.numel() for p in full.model.parameters()) == pytest.approx(1.23e6, rel=0.01)
    cfg = TrainConfig(model="dit-tiny", steps=3, batch_size=8, recipe="layerwise", finetune_steps=2)
    tuned = load_or_train(cfg, cache, progress=False)  # fine-tuned from `full` at every depth
    x, t, _ = _inputs(4)
    with torch.inference_mode():
        outs = forward_all(tuned.model, x, t)
    assert len(outs) == 6 and all(torch.isfinite(o).all() for o in outs)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        (dict(cache="deepcache"), "deepcache.*long_skips"),
    ],
)
def test_a_dit_cell_that_needs_what_a_dit_lacks_is_refused_when_read(fields, match):
    with pytest.raises(ValueError, match=match):
        Cell(model="dit-tiny", **fields)


def test_teacache_reads_the_modulated_signal_of_a_dit_and_counts_it():
    model = _dit()
    assert "cache_signal" in capabilities(model)
    x, t, y = _inputs()
    with torch.inference_mode():
        state = model.embed(x, t, y)
        early, late = model.cache_signal(state), model.cache_signal(model.embed(x, t * 0.5, y))
    assert early.shape == state.h.shape and (early - late).abs().max() > 0.01  # depends on t
    assert (model.embed(x, t * 0.5, y).h - state.h).abs().max() == 0  # the embedding does not
    check_flop_meter(model, "full", None, "teacache-batch", *_inputs(8), signal="modulated")


def test_the_modulated_signal_needs_the_capability_and_a_known_name():
    from models import make_model

    uvit = make_model("micro", 8, 1)
    with pytest.raises(ValueError, match=r"signal 'modulated' needs.*cache_signal"):
        EarlyExitDenoiser(
            uvit,
            make_policy("full"),
            T,
            cache=make_cache("teacache-batch", 0.5, signal="modulated"),
        )
    with pytest.raises(ValueError, match="signal 'modulated' needs a model with the cache_sig"):
        Cell(cache="teacache-batch", target_flop_ratio=0.5, cache_args={"signal": "modulated"})
    with pytest.raises(ValueError, match="unknown signal 'input'; valid choices: embed, modulated"):
        make_cache("teacache-batch", 0.5, signal="input")


def test_a_cell_asks_for_the_modulated_signal_under_its_own_key():
    plain = Cell(model="dit-tiny", cache="teacache-batch", target_flop_ratio=0.5)
    modulated = Cell(
        model="dit-tiny",
        cache="teacache-batch",
        target_flop_ratio=0.5,
        cache_args={"signal": "modulated"},
    )
    assert modulated.key != plain.key and "signal" in modulated.label()
    assert modulated.cache_spec.build().signal == "modulated"


def test_a_dit_prunes_by_whole_heads_replays_exactly_and_loads_from_the_cache(cache):
    from pruning import prune, replay

    model = _dit()
    fresh = copy.deepcopy(model)
    x, t, y = _inputs()
    res = prune(model, 0.3, "magnitude")
    for block in model.dit.transformer_blocks:  # 2 heads of 16, 128 hidden channels: 30% off
        a = block.attn1
        assert a.heads == 1 and a.to_q.out_features == a.to_v.out_features == 16
        assert block.ff.net[0].proj.out_features == 89 == block.ff.net[2].in_features
    rebuilt = replay(fresh, res.history, res.num_heads)
    with torch.inference_mode():
        assert (
            torch.equal(rebuilt(x, t, y), model(x, t, y)) and torch.isfinite(model(x, t, y)).all()
        )
    check_flop_meter(model, "calm", 0.9, None, *_inputs(8))  # exits on the pruned DiT
    pc = PruneConfig(base=TrainConfig(model="dit-tiny", steps=3, batch_size=8), finetune_steps=2)
    pm = load_or_prune(pc, cache, progress=False)
    assert sum(p.numel() for p in pm.model.parameters()) < 0.8 * 1.23e6
    assert torch.isfinite(pm.model(torch.randn(2, 1, 8, 8), torch.full((2,), 500.0))).all()
