from __future__ import annotations

import copy

import pytest
import torch

import samplers
from adaptive.policies import make_policy
from bench.data import as_tensors, load_dataset
from bench.prune import PruneConfig, load_or_prune, pruned_before_finetune
from bench.train import TrainConfig
from blockloop import CostModel, EarlyExitDenoiser
from blockloop.model import forward_all
from models import make_model
from pruning import IMPORTANCES, prune, replay

T = 1000


def _model(heads="none"):
    torch.manual_seed(0)
    return make_model("micro", 8, 1, num_heads=4, exit_heads=heads).eval()


def _inputs():
    g = torch.Generator().manual_seed(3)
    return torch.randn(4, 1, 8, 8, generator=g), torch.tensor([0.0, 300.0, 600.0, 999.0])


@pytest.mark.parametrize("importance", list(IMPORTANCES))
def test_prune_removes_heads_and_channels_and_every_readout_runs(importance):
    model = _model("uem")
    before = CostModel(model, T).full
    data, _ = as_tensors(load_dataset("digits", "train"))
    ab = samplers.make_schedule("linear").alphas_cumprod
    res = prune(model, 0.5, importance, data=data, alphas_cumprod=ab, batches=1)
    assert set(res.num_heads.values()) == {2}
    for blk in model.blocks:
        assert blk.attn.num_heads == 2 and blk.attn.qkv.out_features == 3 * 2 * 8
        assert blk.mlp[0].out_features == 64  # 128 hidden channels halved
    x, t = _inputs()
    with torch.no_grad():
        outs = forward_all(model, x, t)
        state = model.embed(x, t)
        for i in range(model.depth):
            model.run_block(i, state)
            assert model.uncertainty(i, state).shape == x.shape  # UEMs stay consistent
    assert all(o.shape == x.shape and torch.isfinite(o).all() for o in outs)
    assert CostModel(model, T).full < 0.6 * before


def test_replaying_history_reproduces_outputs_exactly():
    model = _model()
    fresh = copy.deepcopy(model)
    res = prune(model, 0.5, "magnitude")
    rebuilt = replay(fresh, res.history, res.num_heads)
    x, t = _inputs()
    with torch.no_grad():
        assert torch.equal(rebuilt(x, t), model(x, t))
    # The recipe is plain data: JSON types only.
    import json

    assert json.loads(json.dumps(res.history)) == res.history


def test_round_to_keeps_gemm_friendly_mlp_widths_and_replays():
    """0.3 of 128 channels leaves 89 (torch-pruning's count); round_to=16 keeps 80, in every
    block, and the history replays the rounded shape exactly."""
    plain = prune(_model(), 0.3, "magnitude").model
    model = _model()
    fresh = copy.deepcopy(model)
    res = prune(model, 0.3, "magnitude", round_to=16)
    widths = {b.mlp[0].out_features for b in model.blocks}
    assert widths == {80} and plain.blocks[0].mlp[0].out_features not in widths
    rebuilt = replay(fresh, res.history, res.num_heads)
    x, t = _inputs()
    with torch.no_grad():
        assert torch.equal(rebuilt(x, t), model(x, t))
    from bench.cell import Cell, cell_model_key

    cell = Cell(prune_ratio=0.3, prune_round_to=16)
    assert "x16" in cell.label() and cell_model_key(cell) != cell_model_key(Cell(prune_ratio=0.3))
    for bad in (lambda: PruneConfig(round_to=1), lambda: Cell(prune_ratio=0.3, prune_round_to=1)):
        with pytest.raises(ValueError, match="round_to must be an integer >= 2"):
            bad()


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(ratio=1.0, importance="magnitude"), r"\[0, 1\)"),
        (dict(ratio=-0.1, importance="magnitude"), r"\[0, 1\)"),
        (
            dict(ratio=0.3, importance="l1"),
            "valid choices: magnitude, taylor, diff-pruning, random",
        ),
        (dict(ratio=0.3, importance="taylor"), "needs data"),
    ],
)
def test_bad_prune_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        prune(_model(), **kw)


def test_cli_bad_ratio_exits_2(capsys):
    from bench.prune import main

    with pytest.raises(SystemExit) as e:
        main(["--ratio", "1.5"])
    assert e.value.code == 2 and "[0, 1)" in capsys.readouterr().err


def test_pruned_uem_model_composes_with_executor_and_sampler(cache):
    base = TrainConfig(
        model="micro", recipe="uem", steps=3, batch_size=8, warmup=1, finetune_steps=2
    )
    pc = PruneConfig(base=base, ratio=0.5, importance="diff-pruning", finetune_steps=2)
    pm = load_or_prune(pc, cache, progress=False)
    again = load_or_prune(pc, cache, progress=False)
    assert (pm.cached, again.cached) == (False, True)
    assert pm.meta["base"] == base.key and pm.meta["history"]
    x, t = _inputs()
    with torch.no_grad():
        assert torch.equal(pm.model(x, t), again.model(x, t))
        # Before fine-tuning differs from after (the fine-tune changed the weights).
        assert not torch.equal(pruned_before_finetune(pc, cache)(x, t), pm.model(x, t))
    unpruned = CostModel(make_model("micro", 8, 1, exit_heads="uem"), T).full
    ex = EarlyExitDenoiser(pm.model, make_policy("uem", 0.5), T)
    out = samplers.sample("dpm-solver++", ex, pm.schedule, (6, 1, 8, 8), 4)
    assert torch.isfinite(out.samples).all()
    assert ex.flop_ratio_vs(unpruned) < ex.flop_ratio <= 1.0 + 1e-9


def test_a_changed_base_recipe_gets_a_new_pruned_key():
    """`uem` changed meaning (recipe revision 1): its pruned model must not reuse the old one's
    key, while pruned models of unchanged recipes keep theirs."""
    from bench.cache import config_hash
    from bench.prune import PruneConfig
    from bench.train import TrainConfig

    full = PruneConfig(base=TrainConfig(recipe="full").normalised())
    assert full.key == config_hash(full, kind="pruned")
    uem = PruneConfig(base=TrainConfig(recipe="uem"))
    assert uem.key != config_hash(uem, kind="pruned")
