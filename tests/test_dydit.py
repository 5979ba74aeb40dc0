"""DyDiT (adaptive.dydit, adaptive.dydit_policy): the sliced inference equals the masked
training forward, the FLOP meter equals FlopCounterMode on every pattern, the loss trains the
routers, and bad input is refused."""

from __future__ import annotations

import pytest
import torch
from adapters import jittered

from adaptive.dydit import MODES, attach_routers, dydit_loss, dynamic_forward, hard_mask
from adaptive.dydit_policy import DyDiT
from adaptive.policies import make_policy
from bench.cell import Cell
from bench.train import TrainConfig, build_model
from blockloop import EarlyExitDenoiser
from blockloop.flops import count_flops
from caching import make_cache
from models import make_model
from models.dit import make_dit

T = 1000


def _random_routers(model, seed: int) -> None:
    """Router weights that switch heads, groups and tokens on and off in a t-dependent way."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.routers.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _model(mode: str, seed: int = 0, arch: str = "uvit"):
    torch.manual_seed(seed)
    if arch == "dit":  # a tiny DiT (adaLN-Zero gates moved off zero) behind the adapter
        base = jittered(make_dit(8, 1, 0, patch_size=2, embed_dim=32, depth=4, num_heads=4))
    else:
        base = make_model("micro", 8, 1, exit_heads="dydit")
    m = attach_routers(base, mode).eval()
    _random_routers(m, seed)
    return m


@pytest.mark.parametrize("arch", ["uvit", "dit"])
@pytest.mark.parametrize("mode", MODES)
def test_sliced_inference_equals_masked_forward_and_flop_counter(mode, arch):
    if arch == "dit":
        pytest.importorskip("diffusers")
    m = _model(mode, arch=arch)
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10.0, 10.0, 400.0, 400.0, 900.0, 900.0])  # three width patterns
    ex = EarlyExitDenoiser(m, DyDiT(), T)
    with torch.no_grad():
        counted, out = count_flops(ex, x, t)
        ref, ratio = dynamic_forward(m, x, t, None, mask_fn=hard_mask)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert ex.executed_flops == counted  # the meter is exact, whatever the pattern
    assert ex.flop_ratio == pytest.approx(float(ratio.mean()), rel=1e-6)
    assert ex.flop_ratio < 1.0  # the random routers switched something off
    rec = ex.policy.widths[-1]
    assert len(rec["heads"]) == m.depth and all(0 < v <= 1 for v in rec["groups"])


def test_all_on_routers_reproduce_the_static_model():
    torch.manual_seed(0)
    m = attach_routers(make_model("micro", 8, 1, exit_heads="dydit"), "both").eval()
    x, t = torch.randn(3, 1, 8, 8), torch.full((3,), 500.0)
    ex = EarlyExitDenoiser(m, DyDiT(), T)
    with torch.no_grad():
        torch.testing.assert_close(ex(x, t), m(x, t), rtol=0, atol=1e-6)
    assert 1.0 < ex.flop_ratio < 1.01  # the routers' own cost, nothing switched off


def test_threshold_knob_trades_flops():
    m = _model("both", seed=3)
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 300.0)
    ratios = []
    for knob in (0.2, 0.5, 0.8):
        ex = EarlyExitDenoiser(m, DyDiT(knob), T)
        with torch.no_grad():
            ex(x, t)
        ratios.append(ex.flop_ratio)
    assert ratios[0] >= ratios[1] >= ratios[2] and ratios[0] > ratios[2]


def test_loss_moves_the_routers_toward_the_target():
    torch.manual_seed(0)
    m = build_model(TrainConfig(model="micro", recipe="dydit", flop_target=0.5))
    opt = torch.optim.Adam(m.routers.parameters(), lr=1e-2)
    x0 = torch.randn(32, 1, 8, 8)
    first = last = None
    for _ in range(40):
        t = torch.randint(0, T, (32,)).float()
        eps = torch.randn_like(x0)
        loss, logs = dydit_loss(m, x0, t, None, eps, step=1000, flop_target=0.5, finetune_steps=10)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = logs["ratio"] if first is None else first
        last = logs["ratio"]
    assert last < first - 0.1


def test_recipe_and_config_plumbing():
    cfg = TrainConfig(model="micro", recipe="dydit", flop_target=0.65)
    assert cfg.base == TrainConfig(model="micro")  # fine-tunes the plain full model
    assert cfg.key != TrainConfig(model="micro", recipe="dydit", flop_target=0.5).key
    assert TrainConfig(model="micro").key == TrainConfig(model="micro", flop_target=None).key
    assert build_model(TrainConfig(model="micro", recipe="dydit-width", flop_target=0.8)).routers
    cell = Cell(model="micro", policy="dydit", recipe="dydit", target_flop_ratio=0.65)
    from bench.cell import cell_train_config

    assert cell_train_config(cell).flop_target == 0.65


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(recipe="dydit"), "flop_target"),
        (dict(recipe="dydit", flop_target=0.0), r"\(0, 1\]"),
        (dict(recipe="dydit", flop_target=1.2), r"\(0, 1\]"),
    ],
)
def test_bad_training_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(model="micro", **kwargs)


def test_bad_cells_and_models():
    with pytest.raises(ValueError, match="target_flop_ratio"):
        Cell(model="micro", policy="dydit", recipe="dydit", knob=0.5)
    with pytest.raises(ValueError, match="needs recipe dydit"):  # a model without routers
        Cell(model="micro", policy="dydit", recipe="full", target_flop_ratio=0.65)
    with pytest.raises(ValueError, match="cache"):
        Cell(model="micro", policy="dydit", recipe="dydit", target_flop_ratio=0.5, cache="fora")
    with pytest.raises(ValueError, match="threshold"):
        make_policy("dydit", 1.5)
    with pytest.raises(ValueError, match="mode"):
        attach_routers(make_model("micro", 8, 1), "depth")
    with pytest.raises(ValueError, match="U-ViT's and the DiT adapter's blocks, not to a Linear"):
        attach_routers(torch.nn.Linear(2, 2), "both")
    m = _model("both")
    with pytest.raises(ValueError, match="compose"):
        EarlyExitDenoiser(m, DyDiT(), T, cache=make_cache("fora", 2))


def test_a_dydit_cell_runs_end_to_end_at_its_target(shared_cache_dir):
    from bench.cache import ArtifactCache
    from bench.run import run_cell

    cell = Cell(
        model="micro", recipe="dydit", policy="dydit", target_flop_ratio=0.8, steps=3, samples=8
    )
    rec = run_cell(cell, ArtifactCache(shared_cache_dir))
    assert rec["calibration_flop_ratio"] == pytest.approx(0.8, abs=0.03)  # the threshold's
    assert rec["flop_ratio_per_call"] == pytest.approx(0.8, abs=0.1)
    assert 0.01 <= rec["knob_used"] <= 0.99 and rec["fid"] > 0


def test_width_study_reports_the_uncalibrated_ratio_and_draws_the_pattern(
    shared_cache_dir, tmp_path, capsys
):
    from bench.studies import dydit_widths

    argv = ["--model", "micro", "--targets", "0.8", "--samples", "4", "--steps", "3"]
    out = tmp_path / "w"
    assert dydit_widths.main([*argv, "--out", str(out), "--cache-dir", str(shared_cache_dir)]) == 0
    import pandas as pd

    df = pd.read_csv(out / "widths.csv")
    assert df["target"].tolist() == [0.8] and 0 < df["flop_ratio"].iloc[0] <= 1.01
    assert (out / "dydit_widths.png").stat().st_size > 0


@pytest.mark.parametrize("argv", [["--targets", "1.5"], ["--recipe", "uem"], ["--steps", "0"]])
def test_width_study_bad_arguments_exit_2(argv, tmp_path):
    from bench.studies import dydit_widths

    with pytest.raises(SystemExit) as e:
        dydit_widths.main([*argv, "--out", str(tmp_path / "w")])
    assert e.value.code == 2 and not (tmp_path / "w").exists()


def test_the_registered_dit_takes_routers_from_the_recipe():
    pytest.importorskip("diffusers")
    m = build_model(TrainConfig(model="dit-tiny", recipe="dydit", flop_target=0.65))
    assert m.exit_heads == "dydit" and len(m.routers.head) == m.depth
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 300.0)
    loss, logs = dydit_loss(m, x, t, None, torch.randn_like(x), flop_target=0.65)
    loss.backward()
    assert all(p.grad is not None for p in m.routers.head.parameters())
    assert 0 < logs["ratio"] <= 1.02
    Cell(model="dit-tiny", policy="dydit", recipe="dydit", target_flop_ratio=0.65)  # accepted
