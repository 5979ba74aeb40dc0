from __future__ import annotations

import pytest
import torch

import samplers
from adaptive.policies import POLICIES, ExitPolicy, make_policy
from blockloop.executor import EarlyExitDenoiser
from blockloop.flops import flop_counter
from models import make_model

T = 1000


def _model(heads="none", num_classes=0, seed=0):
    torch.manual_seed(seed)
    return make_model("micro", 8, 1, num_classes=num_classes, exit_heads=heads, depth=7).eval()


def _inputs(b=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 1, 8, 8, generator=g), torch.linspace(0, T - 1, b)


class ByRow(ExitPolicy):
    """Test policy: row r (by its value of t) exits after block (r mod depth)."""

    name = "byrow"

    def begin(self, ctx):
        ctx.memory["target"] = torch.arange(ctx.t.shape[0]) % ctx.model.depth

    def decide(self, ctx):
        return ctx.memory["target"] <= ctx.layer, ctx.memory["target"].float()


def test_full_policy_equals_plain_forward():
    model = _model()
    x, t = _inputs()
    ex = EarlyExitDenoiser(model, make_policy("full"), T)
    with torch.inference_mode():
        ref, out = model(x, t), ex(x, t)
    assert (out - ref).abs().max().item() <= 1e-5
    assert ex.trace.exit_block[0].tolist() == [model.depth - 1] * 6
    assert ex.layer_ratio == 1.0 and ex.flop_ratio == pytest.approx(1.0)


def test_compaction_keeps_each_sample_identical_to_running_it_alone():
    model = _model()
    x, t = _inputs(b=9)
    ex = EarlyExitDenoiser(model, ByRow(), T)
    with torch.inference_mode():
        out = ex(x, t)
        assert ex.trace.exit_block[0].tolist() == [r % model.depth for r in range(9)]
        for r in range(9):
            # Alone: run the blocks up to its exit and read out.
            state = model.embed(x[r : r + 1], t[r : r + 1])
            for i in range(r % model.depth + 1):
                model.run_block(i, state)
            alone = model.readout(state)
            assert (out[r : r + 1] - alone).abs().max().item() <= 1e-5, r
    # Compaction really cut work: fewer FLOPs than the full model.
    assert ex.flop_ratio < 0.75


@pytest.mark.parametrize(
    ("name", "knob", "heads", "opts", "expected"),
    [
        ("static", 2, "none", {}, [2] * 6),
        ("uem", 1.0, "uem", {"patience": 1}, [0] * 6),  # every uncertainty < 1
        ("uem", 1.0, "uem", {}, [1] * 6),  # official patience 2: the second in-block
        ("uem", 1.0, "uem", {"patience": 5}, [3] * 6),  # in-blocks 0-2 never 5 times: mid block
        ("uem-official", 1.0, "uem", {}, [1] * 6),
        ("berxit", 1.0, "lte", {}, [0] * 6),
        ("calm", -1.0, "none", {}, [0] * 6),
        ("pabee", 4.0, "none", {"patience": 2}, [2] * 6),
        ("duodiff", 0.0, "none", {"shallow": 3}, [3] * 6),
    ],
)
def test_policies_that_must_exit_do(name, knob, heads, opts, expected):
    model = _model(heads)
    x, t = _inputs()
    ex = EarlyExitDenoiser(model, make_policy(name, knob, **opts), T)
    with torch.inference_mode():
        ex(x, t)
    assert ex.trace.exit_block[0].tolist() == expected


@pytest.mark.parametrize(
    ("name", "knob", "heads"),
    [
        ("uem", 0.0, "uem"),
        ("berxit", 0.0, "lte"),
        ("calm", 1.0, "none"),
        ("pabee", 0.0, "none"),
        ("ase", 0.0, "none"),
        ("duodiff", 1.0, "none"),
    ],
)
def test_policies_at_their_never_exit_knob_run_full_depth(name, knob, heads):
    model = _model(heads)
    x, t = _inputs()
    t = t.clamp(max=T - 2)  # duodiff's switch=1 means t >= T-1 would still exit
    ex = EarlyExitDenoiser(model, make_policy(name, knob), T)
    with torch.inference_mode():
        ex(x, t)
    assert ex.trace.exit_block[0].tolist() == [model.depth - 1] * 6


def test_ase_runs_more_blocks_near_t0():
    model = _model()
    ex = EarlyExitDenoiser(model, make_policy("ase", 0.8), T)
    x = torch.randn(3, 1, 8, 8)
    with torch.inference_mode():
        ex(x, torch.tensor([0.0, 500.0, 999.0]))
    blocks = ex.trace.exit_block[0].tolist()
    assert blocks[0] == model.depth - 1 and blocks[0] > blocks[1] > blocks[2]


@pytest.mark.parametrize(
    ("name", "knob", "heads"),
    [
        ("full", None, "none"),
        ("static", 3, "none"),
        ("uem", 0.5, "uem"),
        ("berxit", 0.5, "lte"),
        ("calm", 0.9, "none"),
        ("pabee", 0.3, "none"),
        ("ase", 0.6, "none"),
        ("duodiff", 0.4, "none"),
        ("byrow", None, "none"),
    ],
)
def test_flop_accounting_matches_flop_counter(name, knob, heads):
    model = _model(heads)
    x, t = _inputs(b=8)
    policy = ByRow() if name == "byrow" else make_policy(name, knob)
    ex = EarlyExitDenoiser(model, policy, T)
    with torch.inference_mode(), flop_counter() as fc:
        ex(x, t)
    measured = fc.get_total_flops()
    assert ex.executed_flops == pytest.approx(measured, rel=0.02)


def test_executor_under_cfg_decides_per_row():
    model = _model("uem", num_classes=10)
    ex = EarlyExitDenoiser(model, make_policy("uem", 0.5), T)
    cfg = samplers.ClassifierFreeGuidance(ex, scale=2.0, null_cond=10)
    schedule, cond = samplers.make_schedule("linear"), torch.tensor([1, 2, 3, 4])
    with torch.inference_mode():
        out = samplers.sample("ddim", cfg, schedule, (4, 1, 8, 8), 3, cond=cond)
    assert out.samples.shape == (4, 1, 8, 8) and torch.isfinite(out.samples).all()
    assert len(ex.trace) == 3 and ex.trace.exit_block[0].shape == (8,)  # 2B rows per call


def test_paired_rows_exit_together_at_the_later_block():
    """CFG option: a sample's cond and uncond rows exit at the first block where *both* may;
    unpaired, each row exits at its own block."""
    model = _model(num_classes=10)
    x, t = _inputs(8)
    x, t = torch.cat([x[:4], x[:4]]), torch.cat([t[:4], t[:4]])
    cond = torch.tensor([1, 2, 3, 4, 10, 10, 10, 10])

    class Own(ExitPolicy):  # cond rows exit after block r, uncond rows after block 3 - r
        name = "own"

        def begin(self, ctx):
            r = torch.arange(4)
            ctx.memory["target"] = torch.cat([r, 3 - r])

        def decide(self, ctx):
            return ctx.memory["target"] <= ctx.layer, ctx.memory["target"].float()

    with torch.inference_mode():
        alone = EarlyExitDenoiser(model, Own(), T)
        alone(x, t, cond)
        paired = EarlyExitDenoiser(model, Own(), T, paired=True)
        out = paired(x, t, cond)
    assert alone.trace.exit_block[0].tolist() == [0, 1, 2, 3, 3, 2, 1, 0]
    assert paired.trace.exit_block[0].tolist() == [3, 2, 2, 3, 3, 2, 2, 3]
    # Each paired row equals running the model to that block alone.
    with torch.inference_mode():
        ref = EarlyExitDenoiser(model, make_policy("static", 2), T)(x, t, cond)
    rows = [1, 2, 5, 6]
    torch.testing.assert_close(out[rows], ref[rows], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="even batch"):
        paired(x[:3], t[:3], cond[:3])


def test_trace_arrays_cover_every_sample_and_call():
    model = _model("uem")
    ex = EarlyExitDenoiser(model, make_policy("uem", 0.5), T)
    with torch.inference_mode():
        samplers.sample("ddim", ex, samplers.make_schedule("linear"), (5, 1, 8, 8), 4)
    a = ex.trace.arrays()
    assert len(a["t"]) == len(a["exit_block"]) == len(a["score"]) == 20
    assert set(a["call"].tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: make_policy("early"), "valid choices: full, static, ase, calm, pabee"),
        (lambda: make_policy("uem", 1.5), r"tau must be in \[0.0, 1.0\]"),
        (lambda: make_policy("static", 2.5), "integer"),
        (lambda: make_policy("full", 0.3), "has no knob"),
        (lambda: make_policy("pabee", 0.1, patience=0), "patience"),
        (lambda: make_policy("calm", 0.1, nonsense=3), "bad options"),
        (lambda: EarlyExitDenoiser(_model(), make_policy("uem", 0.1), T), "needs a model trained"),
        (lambda: EarlyExitDenoiser(_model(), make_policy("static", 9), T), r"\[0, 6\]"),
    ],
)
def test_bad_policy_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_registry_has_every_policy():
    assert set(POLICIES) == {
        "full",
        "static",
        "ase",
        "calm",
        "pabee",
        "berxit",
        "uem",
        "uem-official",
        "duodiff",
        "dydit",
    }


@pytest.mark.parametrize(("name", "heads"), [("uem", "uem"), ("ase", "none"), ("static", "none")])
def test_calibration_hits_target_flop_ratio(name, heads):
    from adaptive.calibrate import calibrate

    model = _model(heads)
    schedule = samplers.make_schedule("linear")
    from adaptive.calibrate import CalibrationRun

    run = CalibrationRun(steps=4, n=8)
    cal = calibrate(model, schedule, name, 0.6, run=run)
    assert cal.knob is not None and len(cal.history) >= 3
    # The reported ratio is the closest one measured, and it is what a rerun gives.
    assert abs(cal.achieved - 0.6) == min(abs(r - 0.6) for _, r in cal.history)
    from adaptive.calibrate import measure
    from adaptive.policies import ExitSpec

    again = measure(model, schedule, ExitSpec(name, cal.knob), run)
    assert again.flop_ratio == pytest.approx(cal.achieved)
    if name == "ase":  # a continuous knob on a smooth schedule: bisection gets close
        assert abs(cal.achieved - 0.6) < 0.05


def test_calibration_rejects_bad_target():
    from adaptive.calibrate import calibrate

    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        calibrate(_model(), samplers.make_schedule("linear"), "ase", 1.5)


def _uem_model_with_bias(bias_by_block):
    """A micro UEM model whose UEM i outputs sigmoid(bias_i) everywhere (weights zeroed)."""
    model = _model("uem")
    with torch.no_grad():
        for head, b in zip(model.uem, bias_by_block, strict=True):
            head.weight.zero_()
            head.bias.fill_(b)
    return model


def test_uem_patience_counts_in_block_passes_not_consecutive_ones():
    """Official rule (AdaDiff libs/uvit.py): the second in-block below the threshold exits, even
    with a block above it in between; mid and out blocks exit at once."""
    # depth 7: in-blocks 0-2, mid 3. Certain at blocks 0 and 2, uncertain at block 1.
    model = _uem_model_with_bias([-8.0, 8.0, -8.0, 8.0, 8.0, 8.0, 8.0])
    x, t = _inputs()
    for patience, expected in [(1, 0), (2, 2), (3, 6)]:
        ex = EarlyExitDenoiser(model, make_policy("uem", 0.5, patience=patience), T)
        with torch.inference_mode():
            ex(x, t)
        assert ex.trace.exit_block[0].tolist() == [expected] * 6, patience


def test_uem_official_is_per_sample_uem_at_batch_one_and_one_decision_per_batch():
    model = _model("uem", seed=3)
    x, t = _inputs(b=8)
    # A threshold between the rows' uncertainties, so rows really differ.
    with torch.inference_mode():
        state = model.embed(x, t)
        model.run_block(0, state)
        model.run_block(1, state)
        u = model.uncertainty(1, state).flatten(1).mean(1)
        tau = float(u.median())
        per_row = EarlyExitDenoiser(model, make_policy("uem", tau), T)
        out = per_row(x, t)
        for r in range(8):
            alone = EarlyExitDenoiser(model, make_policy("uem-official", tau), T)
            o = alone(x[r : r + 1], t[r : r + 1])
            torch.testing.assert_close(o, out[r : r + 1], atol=1e-5, rtol=1e-5)
            assert alone.trace.exit_block[0].item() == per_row.trace.exit_block[0][r].item()
        batch = EarlyExitDenoiser(model, make_policy("uem-official", tau), T)
        batch(x, t)
    blocks = batch.trace.exit_block[0]
    assert len(set(per_row.trace.exit_block[0].tolist())) > 1  # rows differ per sample...
    assert (blocks == blocks[0]).all()  # ...but the batch-mean rule moves them together


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: make_policy("uem", 0.1, patience=0), "patience must be an integer >= 1"),
        (lambda: make_policy("uem", 0.1, patience=1.5), "patience must be an integer >= 1"),
        (lambda: make_policy("uem-official", 0.1, patience=1), "official patience is 2"),
        (
            lambda: EarlyExitDenoiser(
                _model("uem"), make_policy("uem-official", 0.1), T, paired=True
            ),
            "decides once for the whole batch",
        ),
    ],
)
def test_bad_uem_options_are_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()
