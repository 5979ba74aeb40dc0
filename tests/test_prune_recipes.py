"""The pruned model's fine-tune (issue 15): iterative rounds, distillation from the unpruned
model, the train-small control, their cell fields and their bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import samplers
from bench.cell import Cell, cell_prune_config, cell_train_config
from bench.data import as_tensors, load_dataset
from bench.distill import Distiller
from bench.prune import PruneConfig, load_or_prune, main, scratch_steps
from bench.train import TrainConfig
from blockloop import CostModel
from models import make_model
from pruning import head_schedule, prune, replay

T = 1000


def _model():
    torch.manual_seed(0)
    return make_model("micro", 8, 1, num_heads=4).eval()


def _inputs():
    g = torch.Generator().manual_seed(3)
    return torch.randn(4, 1, 8, 8, generator=g), torch.tensor([0.0, 300.0, 600.0, 999.0])


def _base():
    return TrainConfig(model="micro", steps=3, batch_size=8, warmup=1).normalised()


@pytest.mark.parametrize("heads", [4, 8])
@pytest.mark.parametrize("ratio", [0.15, 0.3, 0.5])
@pytest.mark.parametrize("rounds", [1, 2, 3, 4])
def test_head_schedule_removes_the_one_shot_count_in_rounds(heads, ratio, rounds):
    """torch-pruning removes ceil(r * heads left) per step; the schedule's ratios must add up
    to the one-shot count ceil(ratio * heads), never removing more."""
    sched = head_schedule(heads, ratio, rounds)
    left = heads
    for r in sched[1:]:
        left -= math.ceil(r * left) if r > 0 else 0
    assert heads - left == math.ceil(ratio * heads)
    assert len(sched) == rounds + 1


def test_iterative_rounds_end_at_the_one_shot_shape_and_replay_exactly():
    data, _ = as_tensors(load_dataset("digits", "train"))
    ab = samplers.make_schedule("linear").alphas_cumprod
    one = prune(_model(), 0.5, "diff-pruning", data=data, alphas_cumprod=ab, batches=1)
    seen = []

    def between(r, m):
        seen.append((r, m.blocks[0].mlp[0].out_features, m.blocks[0].attn.num_heads))
        with torch.no_grad():  # a stand-in fine-tune: the weights change in place
            for p in m.parameters():
                p.add_(0.01)

    fresh = _model()
    taylor = prune(
        copy.deepcopy(fresh), 0.5, "taylor", data=data, alphas_cumprod=ab, batches=1, rounds=3
    )
    assert taylor.num_heads == one.num_heads
    model = copy.deepcopy(fresh)
    res = prune(
        model,
        0.5,
        "diff-pruning",
        data=data,
        alphas_cumprod=ab,
        batches=1,
        rounds=3,
        between=between,
    )
    assert res.num_heads == one.num_heads
    assert [b.mlp[0].out_features for b in model.blocks] == [64] * model.depth
    # between() ran after rounds 1 and 2 (not after the last), on shrinking shapes.
    assert [s[0] for s in seen] == [0, 1]
    assert 128 > seen[0][1] > seen[1][1] > 64
    rebuilt = replay(copy.deepcopy(fresh), res.history, res.num_heads)
    rebuilt.load_state_dict(model.state_dict())
    x, t = _inputs()
    with torch.no_grad():
        assert torch.equal(rebuilt(x, t), model(x, t))


def test_output_distillation_is_the_task_loss_plus_kd_in_gradient():
    """MSE(e, blend) * (1 + w) has the gradient of MSE(e, eps) + w * MSE(e, eps_teacher)."""
    teacher = _model()
    x, t = _inputs()
    eps = torch.randn_like(x)
    w = 0.7
    with Distiller(teacher, output=w) as d:
        target = d.target(x, t, None, eps)
        with torch.no_grad():
            eps_t = teacher(x, t)
    assert torch.allclose(target, (eps + w * eps_t) / (1 + w))
    e = torch.randn_like(x, requires_grad=True)
    (g1,) = torch.autograd.grad((1 + w) * F.mse_loss(e, target), e)
    (g2,) = torch.autograd.grad(F.mse_loss(e, eps) + w * F.mse_loss(e, eps_t), e)
    assert torch.allclose(g1, g2, atol=1e-6)
    assert torch.equal(Distiller(teacher, output=0.0).target(x, t, None, eps), eps)


def test_feature_distillation_is_zero_for_a_copy_and_positive_for_a_pruned_student():
    teacher = _model()
    with torch.no_grad():  # a "trained" teacher: no zero-initialised branch left
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    student = copy.deepcopy(teacher)  # (before the Distiller freezes the teacher's weights)
    prune(student, 0.5, "magnitude")
    x, t = _inputs()
    with Distiller(teacher, features=1.0).attach(copy.deepcopy(teacher)) as d:
        d.target(x, t, None, x)
        d.student(x, t)
        assert d.feature_loss().item() == pytest.approx(0.0, abs=1e-10)
    with Distiller(teacher, features=1.0).attach(student) as d:
        d.target(x, t, None, x)
        with pytest.raises(RuntimeError, match="did not all run"):
            d.feature_loss()
        d.student(x, t)
        loss = d.feature_loss()
        assert loss.item() > 0
        loss.backward()  # the student learns from it; the teacher is frozen
    assert student.blocks[0].mlp[0].weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    assert not student.blocks[0]._forward_hooks  # hooks removed on exit


def test_distilled_iterative_and_scratch_models_build_cache_and_sample(cache):
    base = _base()
    plain = load_or_prune(
        PruneConfig(base=base, ratio=0.5, finetune_steps=2), cache, progress=False
    )
    kd = PruneConfig(base=base, ratio=0.5, finetune_steps=4, distill=1.0, distill_features=0.5)
    iterative = PruneConfig(base=base, ratio=0.5, finetune_steps=4, distill=1.0, rounds=2)
    scratch = PruneConfig(base=base, ratio=0.5, finetune_steps=2, scratch=True)
    x, t = _inputs()
    outs = []
    for pc in (kd, iterative, scratch):
        pm = load_or_prune(pc, cache, progress=False)
        again = load_or_prune(pc, cache, progress=False)
        assert (pm.cached, again.cached) == (False, True)
        assert pm.meta["prune"]["distill"] == pc.distill
        assert pm.meta["num_heads"] == plain.meta["num_heads"]  # the same pruned shape
        with torch.no_grad():
            assert torch.equal(pm.model(x, t), again.model(x, t))
            outs.append(pm.model(x, t))
        out = samplers.sample("ddim", pm.model, pm.schedule, (3, 1, 8, 8), 3)
        assert torch.isfinite(out.samples).all()
    with torch.no_grad():
        ref = plain.model(x, t)
    assert all(not torch.equal(o, ref) for o in outs)
    # The control's length: pre-training compute plus the fine-tune, in pruned-model steps.
    pm = load_or_prune(scratch, cache, progress=False)
    full = make_model("micro", 8, 1)
    ratio = CostModel(full, T).full / CostModel(pm.model, T).full
    assert ratio > 1.5
    assert pm.meta["scratch_steps"] == round(base.steps * ratio) + 2
    assert pm.meta["scratch_steps"] == scratch_steps(scratch, full, pm.model)
    assert pm.meta["steps"] == pm.meta["scratch_steps"]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(ratio=1.0), r"\[0, 1\)"),
        (dict(finetune_steps=0), "finetune_steps must be >= 1"),
        (dict(rounds=0), "rounds must be an integer >= 1"),
        (dict(rounds=4, finetune_steps=2), "must cover every round"),
        (dict(distill=-1.0), "distill must be a finite number >= 0"),
        (dict(distill_features=float("nan")), "distill_features must be"),
        (dict(scratch=True, rounds=2), "rounds must be 1"),
        (dict(teacher="somewhere"), "'base'"),
        (dict(teacher="0123456789abcdef"), "only used with distill"),
        (dict(finetune_lr=0.0), "finetune_lr"),
    ],
)
def test_bad_prune_config(kw, match):
    with pytest.raises(ValueError, match=match):
        PruneConfig(base=_base(), **kw)


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--finetune-steps", "0"], ">= 1"),
        (["--rounds", "0"], ">= 1"),
        (["--ratio", "1.0"], "[0, 1)"),
        (["--distill", "1", "--teacher", "0123456789abcdef"], "needs a teacher checkpoint"),
    ],
)
def test_cli_bad_fine_tune_exits_2_and_writes_nothing(argv, match, tmp_path, capsys):
    cache_dir = tmp_path / "cache"
    with pytest.raises(SystemExit) as e:
        main([*argv, "--model", "micro", "--cache-dir", str(cache_dir), "--no-progress"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and match in err and "Traceback" not in err
    assert not cache_dir.exists() or not any(cache_dir.rglob("*.safetensors"))


def test_cell_fine_tune_fields_map_to_the_prune_config_and_keys():
    cell = Cell(
        model="micro",
        prune_ratio=0.3,
        prune_finetune_steps=40,
        prune_lr=1e-3,
        prune_distill=0.0,
        prune_distill_features=0.5,
        prune_rounds=2,
    )
    pc = cell_prune_config(cell, cell_train_config(cell))
    assert (pc.finetune_steps, pc.finetune_lr, pc.distill, pc.distill_features, pc.rounds) == (
        40,
        1e-3,
        0.0,
        0.5,
        2,
    )
    assert cell.label().startswith("micro full prune0.3(ft40,lr0.001,kd0,fkd0.5,r2)")
    # Unset fields keep the PruneConfig defaults (the micro budget's fine-tune length).
    plain = Cell(model="micro", prune_ratio=0.3)
    assert cell_prune_config(plain, cell_train_config(plain)).finetune_steps == 50
    assert Cell(model="micro", prune_ratio=0.3, prune_scratch=True).key != plain.key
    with pytest.raises(ValueError, match="need prune_ratio > 0"):
        Cell(prune_distill=1.0)
    with pytest.raises(ValueError, match="finetune_steps must be >= 1"):
        Cell(prune_ratio=0.3, prune_finetune_steps=0)
    with pytest.raises(ValueError, match="must be a boolean"):
        Cell(prune_ratio=0.3, prune_scratch=1)
    kd = Cell(prune_ratio=0.3, prune_distill=1.0, prune_teacher="0123456789abcdef")
    assert cell_prune_config(kd, cell_train_config(kd)).teacher == "0123456789abcdef"
    assert "kd1,T01234567)" in kd.label()
    with pytest.raises(ValueError, match="teacher must be 'base'"):
        Cell(prune_ratio=0.3, prune_distill=1.0, prune_teacher="best")
