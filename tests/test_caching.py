"""Step-level caches (caching/): exactness at their "recompute everything" knob, FLOP
accounting against FlopCounterMode, state reset between runs, composition rules, calibration,
the Learning-to-Cache router, and cells / CLI with bad cache input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import samplers
from adaptive.calibrate import CalibrationRun, calibrate
from adaptive.policies import make_policy
from bench.cell import Cell
from bench.grid import main as grid_main
from blockloop.executor import EarlyExitDenoiser
from blockloop.flops import flop_counter
from caching import CACHES, CacheSpec, make_cache
from caching.l2c import train_router
from models import make_model

T = 1000
SCHEDULE = samplers.make_schedule("linear", T)
STEPS = 8


def _model(heads="none", seed=0):
    torch.manual_seed(seed)
    return make_model("micro", 8, 1, exit_heads=heads, depth=7).eval()


def _router(calls=STEPS, depth=7, seed=0):
    return torch.rand(calls, depth, 2, generator=torch.Generator().manual_seed(seed))


def _cache(name, knob, **kw):
    if name == "l2c":
        kw.setdefault("router", _router())
    return make_cache(name, knob, **kw)


def _sample(model, cache=None, policy="full", knob=None, sampler="ddim", n=6, seed=3, **kw):
    ex = EarlyExitDenoiser(model, make_policy(policy, knob), T, cache=cache)
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        out = samplers.sample(sampler, ex, SCHEDULE, (n, 1, 8, 8), STEPS, generator=g, **kw)
    return out.samples, ex


# (policy, knob that recomputes everything, a knob that reuses, options)
POLICIES = [
    ("fora", 1.0, 2.0, {}),
    ("deepcache", 1.0, 2.0, {"branch": 1}),
    ("deepcache", 1.0, 3.0, {"branch": 0}),
    ("teacache", 0.0, 0.3, {}),
    ("teacache-batch", 0.0, 1.5, {}),
    ("magcache", 0.0, 1.0, {"ratios": [1.0] + [0.9] * (STEPS - 1), "calls": STEPS}),
    ("l2c", 0.0, 0.6, {}),
    ("fbcache", 0.0, 0.5, {}),
    ("taylorseer", 1.0, 2.0, {"order": 1}),
    ("taylorseer", 1.0, 3.0, {"order": 2}),
]


@pytest.mark.parametrize("name, exact, _, opts", POLICIES)
@pytest.mark.parametrize("sampler", ["ddim", "dpm-solver++", "unipc-bh2"])
def test_cache_that_recomputes_every_call_equals_the_plain_model(name, exact, _, opts, sampler):
    model = _model()
    ref, _ = _sample(model, sampler=sampler)
    out, ex = _sample(model, _cache(name, exact, **opts), sampler=sampler)
    assert torch.equal(out, ref)
    assert ex.flop_ratio == pytest.approx(1.0)
    assert ex.cache.reuse_ratio == 0


@pytest.mark.parametrize("name, _, knob, opts", POLICIES)
def test_reuse_saves_flops_and_the_meter_matches_flop_counter(name, _, knob, opts):
    model = _model()
    ref, _ = _sample(model)
    ex = EarlyExitDenoiser(model, make_policy("full"), T, cache=_cache(name, knob, **opts))
    g = torch.Generator().manual_seed(3)
    with torch.inference_mode(), flop_counter() as fc:
        out = samplers.sample("ddim", ex, SCHEDULE, (6, 1, 8, 8), STEPS, generator=g).samples
    assert fc.get_total_flops() == pytest.approx(ex.executed_flops, rel=1e-9)
    assert ex.flop_ratio < 0.95
    assert 0 < ex.cache.reuse_ratio < 1
    assert ex.cache.peak_bytes > 0
    assert not torch.equal(out, ref)  # it did reuse something
    assert torch.isfinite(out).all()


def test_fora_interval_two_computes_every_other_call():
    model = _model()
    _, ex = _sample(model, _cache("fora", 2.0))
    c = ex.costs
    per_reuse = c.embed + sum(c.fuse) + c.readout
    expected = (STEPS // 2) * c.full + (STEPS // 2) * per_reuse
    assert ex.executed_flops == pytest.approx(expected * 6)


def test_deepcache_partial_calls_run_the_branch_blocks_only():
    model = _model()
    _, ex = _sample(model, _cache("deepcache", 2.0, branch=2))
    c, d = ex.costs, model.depth
    branch = sum(c.blocks[:2]) + sum(c.blocks[d - 2 :])
    expected = (STEPS // 2) * c.full + (STEPS // 2) * (c.embed + branch + c.readout)
    assert ex.executed_flops == pytest.approx(expected * 6)


@pytest.mark.parametrize("name, _, knob, opts", POLICIES)
def test_state_resets_between_sampling_runs(name, _, knob, opts):
    model = _model()
    cache = _cache(name, knob, **opts)
    a, ex = _sample(model, cache, seed=5)
    g = torch.Generator().manual_seed(5)
    with torch.inference_mode():  # the same executor, a second run: no stale cache
        b = samplers.sample("ddim", ex, SCHEDULE, (6, 1, 8, 8), STEPS, generator=g).samples
    assert torch.equal(a, b)
    g = torch.Generator().manual_seed(5)
    with torch.inference_mode():  # a different batch size is a new run too
        c = samplers.sample("ddim", ex, SCHEDULE, (4, 1, 8, 8), STEPS, generator=g).samples
    assert c.shape[0] == 4 and torch.isfinite(c).all()


def test_teacache_composes_with_exits_and_counts_flops():
    model = _model("uem")
    cache = _cache("teacache", 0.3)
    ex = EarlyExitDenoiser(model, make_policy("uem", 1.0), T, cache=cache)
    g = torch.Generator().manual_seed(3)
    with torch.inference_mode(), flop_counter() as fc:
        out = samplers.sample("ddim", ex, SCHEDULE, (6, 1, 8, 8), STEPS, generator=g).samples
    assert torch.isfinite(out).all()
    assert fc.get_total_flops() == pytest.approx(ex.executed_flops, rel=1e-9)
    blocks = torch.cat(ex.trace.exit_block)
    assert (blocks == -1).any()  # served wholly from the cache
    assert ((blocks >= 0) & (blocks < model.depth - 1)).any()  # exited early


@pytest.mark.parametrize("name", ["fora", "deepcache", "l2c"])
def test_static_caches_refuse_exit_policies(name):
    with pytest.raises(ValueError, match="does not compose with exit policy 'uem'"):
        EarlyExitDenoiser(
            _model("uem"),
            make_policy("uem", 0.2),
            T,
            cache=_cache(name, 2.0 if name != "l2c" else 0.5),
        )


def test_per_row_cache_refuses_paired_cfg_exits():
    with pytest.raises(ValueError, match="paired"):
        EarlyExitDenoiser(
            _model(), make_policy("full"), T, paired=True, cache=_cache("teacache", 0.1)
        )


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: make_cache("nope"), "unknown cache policy 'nope'; valid choices: deepcache"),
        (lambda: make_cache("fora", 0.5), r"interval must be in \[1.0, 100.0\]"),
        (lambda: make_cache("teacache", -1), r"threshold must be in \[0.0, 10.0\]"),
        (lambda: make_cache("teacache", float("nan")), "threshold must be in"),
        (lambda: make_cache("fora", 2, branch=1), "takes no option branch"),
        (lambda: make_cache("deepcache", 2, branch=-1), "branch must be an integer >= 0"),
        (lambda: make_cache("l2c", 0.5), "needs a learned router"),
        (lambda: make_cache("l2c", 0.5, router=torch.rand(3, 4)), "router must be"),
        (lambda: make_cache("taylorseer", 2, order=3), "no order 3; valid choices: 1, 2"),
        (lambda: make_cache("fbcache", 0.1, branches=3), "branches must be 1 or 2"),
    ],
)
def test_bad_cache_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_deepcache_branch_beyond_the_in_blocks_is_refused():
    with pytest.raises(ValueError, match=r"branch must be in \[0, 3\] for a 7-block model"):
        EarlyExitDenoiser(_model(), make_policy("full"), T, cache=_cache("deepcache", 2, branch=4))


def test_l2c_router_for_fewer_calls_is_refused():
    cache = _cache("l2c", 0.5, router=_router(calls=3))
    with pytest.raises(ValueError, match="learned for 3 denoiser calls"):
        _sample(_model(), cache)


@pytest.mark.parametrize(
    "name, opts", [("fora", {}), ("teacache", {}), ("deepcache", {"branch": 1})]
)
def test_calibration_lands_on_the_target(name, opts):
    model = _model()
    run = CalibrationRun(steps=STEPS, n=8)
    cal = calibrate(model, SCHEDULE, "full", 0.6, cache=CacheSpec(name, options=opts), run=run)
    # fractional intervals reach a ratio per full call (1/8 of the way at 8 calls)
    tol = 0.08 if name != "teacache" else 0.04
    assert cal.achieved == pytest.approx(0.6, abs=tol)
    assert cal.knob is not None and len(cal.history) >= 2
    _, ex = _sample(model, _cache(name, cal.knob, **opts), n=8, seed=1234)
    assert ex.flop_ratio == pytest.approx(cal.achieved)  # the same batch: the same ratio


def test_l2c_router_learns_and_its_threshold_trades_flops():
    model = _model()
    router, info = train_router(model, SCHEDULE, "ddim", STEPS, n=16, iters=30, batch=8)
    assert router.shape == (STEPS, model.depth, 2)
    assert (router[0] == 1).all()  # the first call computes
    assert 0 <= float(router.min()) and float(router.max()) <= 1
    assert info["calls"] == STEPS
    assert (router[0::2] == 1).all()  # as the authors run it: full and cache calls alternate
    ratios = [
        _sample(model, _cache("l2c", th, router=router))[1].flop_ratio for th in (0.0, 0.9, 1.0)
    ]
    assert ratios[0] == pytest.approx(1.0)
    assert ratios[0] >= ratios[1] >= ratios[2]
    assert 0.5 < ratios[2] < 0.75  # at most the cache calls (every other one) save
    # Reuse on any call (the suite's first version) can go below half.
    free, _ = train_router(model, SCHEDULE, "ddim", STEPS, n=16, iters=30, batch=8, alternate=False)
    assert (free[1:] < 1).any() and free[2].min() < 1
    assert _sample(model, _cache("l2c", 1.0, router=free))[1].flop_ratio < 0.5


@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(cache="lru"), "unknown cache 'lru'; valid choices: none, deepcache"),
        (dict(cache_knob=2.0), "need a cache policy"),
        (dict(cache="fora", cache_branch=1), "cache_branch applies to cache 'deepcache'"),
        (dict(cache="deepcache", cache_branch=5), r"branch must be in \[0, 4\]"),
        (dict(cache="fora", cache_knob=0.2), "interval must be in"),
        (dict(cache="fora", cache_order=2), "cache_order applies to cache 'taylorseer'"),
        (dict(cache="taylorseer", cache_order=3), "no order 3; valid choices: 1, 2"),
        (dict(cache_order=1), "need a cache policy"),
        (dict(cache="l2c", cache_knob=2.0), "threshold must be in"),
        (dict(recipe="uem", policy="uem", knob=0.2, cache="fora"), "does not compose"),
        (
            dict(policy="full", cache="fora", cache_knob=2.0, target_flop_ratio=0.5),
            "never exits",
        ),
    ],
)
def test_bad_cache_cells(fields, match):
    with pytest.raises(ValueError, match=match):
        Cell(**fields)


def test_cache_cells_keep_old_keys_and_label_what_is_calibrated():
    assert Cell().key == Cell(cache="none").key
    c = Cell(cache="deepcache", cache_branch=2, target_flop_ratio=0.5)
    assert c.calibrates_cache and c.label() == "full full deepcache2@0.5 ddim-20"
    c = Cell(recipe="uem", policy="uem", cache="teacache", cache_knob=0.1, target_flop_ratio=0.5)
    assert not c.calibrates_cache and c.label() == "uem uem@0.5 teacache=0.1 ddim-20"


def test_grid_cli_refuses_a_bad_cache_and_writes_nothing(tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[[cell]]\ncache = "lru"\n')
    with pytest.raises(SystemExit) as e:
        grid_main(["--config", str(cfg), "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "valid choices: none, deepcache, fora, teacache, teacache-batch, magcache, l2c" in err
    assert not (tmp_path / "out").exists()


def test_every_cache_is_listed():
    assert set(CACHES) == {
        "deepcache", "fora", "teacache", "teacache-batch", "magcache", "l2c", "fbcache",
        "taylorseer",
    }  # fmt: skip


def _fbcache_decisions(model, threshold, n=6, seed=3):
    """FBCache's reuse decision per call, and the same decisions replayed from the recorded
    first-block residuals with the upstream rule (diffusers' FirstBlockCache): compare with the
    residual of the last *computed* call; reuse iff mean|r - r_prev| / mean|r_prev| <= t."""
    cache = _cache("fbcache", threshold)
    seen, real = [], cache._decide

    def record(r0):
        reuse = real(r0)
        seen.append((r0.clone(), bool(reuse.all())))
        return reuse

    cache._decide = record
    _sample(model, cache, n=n, seed=seed)
    replay, prev = [], None
    for r0, _ in seen:
        reuse = (
            prev is not None and float((r0 - prev).abs().mean() / prev.abs().mean()) <= threshold
        )
        replay.append(reuse)
        if not reuse:
            prev = r0
    return [d for _, d in seen], replay


def test_fbcache_decides_as_the_upstream_rule_on_a_recorded_trajectory():
    model = _model()
    decided, replayed = _fbcache_decisions(model, 0.5)
    assert decided == replayed and any(decided) and not all(decided)


def test_fbcache_decides_each_guidance_branch_on_its_own():
    cache = make_cache("fbcache", 0.1, branches=2)
    prev = torch.ones(4, 3, 2)
    cache.store["r0"], cache.call = prev, 1
    now = prev.clone()
    now[2:] *= 2.0  # the unconditional half changed by 100%, the conditional half not at all
    assert cache._decide(now).tolist() == [True, True, False, False]
    assert make_cache("fbcache", 0.1)._decide(now).tolist() == [False] * 4  # no previous call


def test_taylorseer_forecasts_with_finite_differences_between_full_calls():
    ts = make_cache("taylorseer", 2.0, order=1)
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    for call in (0, 2, 4):  # full calls of interval 2, features linear in the call
        ts.call = call
        ts.plan(None)
        ts._update(0, {"attn": a + b * call, "mlp": a - b * call})
    ts.call = 5
    ts.plan(None)
    torch.testing.assert_close(ts._forecast(0, "attn"), a + b * 5)  # order 1: exact on lines
    torch.testing.assert_close(ts._forecast(0, "mlp"), a - b * 5)
    q = make_cache("taylorseer", 2.0, order=2)
    for call in (0, 2, 4):
        q.call = call
        q.plan(None)
        q._update(0, {"attn": a * call**2, "mlp": a})
    q.call = 5
    q.plan(None)
    # D1 = (16a - 4a) / 2 = 6a, D2 = (6a - 2a) / 2 = 2a: 16a + 6a + 2a / 2 = 23a
    torch.testing.assert_close(q._forecast(0, "attn"), 23 * a)


def _upstream_teacache(inputs, threshold, coefficients, calls):
    """The official TeaCache loop, written out on recorded modulated inputs: the first and last
    call compute; otherwise the rescaled relative L1 change accumulates and the call is skipped
    while the sum stays below the threshold; a computed call resets the sum."""
    rescale = np.poly1d(coefficients)
    skip, acc, prev = [], 0.0, None
    for cnt, inp in enumerate(inputs):
        if cnt == 0 or cnt == calls - 1:
            should_calc, acc = True, 0.0
        else:
            acc += rescale(float((inp - prev).abs().mean() / prev.abs().mean()))
            should_calc = acc >= threshold
            if should_calc:
                acc = 0.0
        skip.append(not should_calc)
        prev = inp
    return skip


@pytest.mark.parametrize("coefficients", [(1.0, 0.0), (2.0, -0.5, 1.0, 0.0)])
def test_teacache_batch_decides_as_the_upstream_loop_on_a_recorded_trajectory(coefficients):
    from caching.teacache import TeaCacheBatch

    cache = TeaCacheBatch(1.5, coefficients=coefficients, calls=STEPS)
    seen, real = [], cache.plan

    def record(state):
        served = real(state)
        seen.append((state.h.clone(), served is not None and bool(served.all())))
        return served

    cache.plan = record
    _sample(_model(), cache)
    decided = [d for _, d in seen]
    replayed = _upstream_teacache([h for h, _ in seen], 1.5, coefficients, STEPS)
    assert decided == replayed and any(decided) and not decided[0] and not decided[-1]


def test_teacache_rescale_fit_spans_the_run_and_feeds_the_rule():
    from caching.teacache import TeaCacheBatch, fit_rescale

    model = _model()
    coefficients, info = fit_rescale(model, SCHEDULE, "ddim", STEPS, n=8, batch=4, seed=0)
    assert len(coefficients) == 5 and info["calls"] == STEPS and info["pairs"] == 2 * (STEPS - 1)
    cache = TeaCacheBatch(0.2, coefficients=coefficients, calls=info["calls"])
    _, ex = _sample(model, cache)
    assert ex.flop_ratio < 1.0


@pytest.mark.parametrize(
    "name, kind", [("teacache-batch", "teacache-fit"), ("magcache", "magcache-fit")]
)
def test_a_fitted_cache_cell_fits_once_and_calibrates(name, kind, tmp_path, shared_cache_dir):
    """The grid fits the cache's options (TeaCache's polynomial, MagCache's ratios) for the
    cell's model, sampler and steps (an artifact), then calibrates the threshold to the target
    like any cache."""
    cfg = tmp_path / "sweep.toml"
    cfg.write_text(
        f'[[cell]]\nmodel = "micro"\ncache = "{name}"\ntarget_flop_ratio = 0.6\n'
        "steps = 8\nsamples = 16\n"
    )
    out = tmp_path / "out"
    args = ["--config", str(cfg), "--out", str(out), "--cache-dir", str(shared_cache_dir)]
    assert grid_main(args) == 0
    (rec,) = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    assert rec["flop_ratio_per_call"] == pytest.approx(0.6, abs=0.1)
    assert list((shared_cache_dir / kind).glob("*.safetensors"))


def test_magcache_rule_follows_the_accumulated_magnitude_error():
    """Ratios 0.9 per call, threshold 0.15, at most 2 skips, the first 20% of the calls
    computed: skipping one call costs |1 - 0.9| = 0.1, a second in a row 0.1 + 0.19 > 0.15, so
    calls alternate after the retained start (upstream's Wan2.1 / FLUX loop, by hand)."""
    from blockloop.cost import CostModel
    from caching.magcache import MagCache

    cache = MagCache(0.15, ratios=[1.0] + [0.9] * 9, calls=10, max_skips=2, retention=0.2)
    cache.bind(_model(), CostModel(_model(), T))
    served = []
    for k in range(10):
        state = _model().embed(torch.zeros(2, 1, 8, 8), torch.full((2,), 900.0 - 90 * k))
        mask = cache.begin(torch.full((2,), 900.0 - 90 * k), state)
        served.append(mask is not None and bool(mask.all()))
        cache.store["residual"] = torch.zeros_like(state.h)  # as if computed
    assert served == [False, False, True, False, True, False, True, False, True, False]


def test_magcache_fit_measures_one_ratio_per_call():
    from caching.magcache import fit_ratios

    fitted, info = fit_ratios(_model(), SCHEDULE, "ddim", STEPS, n=8, batch=4, seed=0)
    ratios = fitted["ratios"]
    assert len(ratios) == STEPS == info["calls"] and ratios[0] == 1.0
    assert all(r > 0 for r in ratios) and len(set(ratios)) > 1


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(ratios=[0.0]), "ratios"),
        (dict(max_skips=0), "max_skips"),
        (dict(retention=1.0), "retention"),
        (dict(calls=0), "calls"),
    ],
)
def test_magcache_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        make_cache("magcache", 0.1, **kw)


def test_fitcache_fits_each_fitted_cache_once_under_the_cells_key(shared_cache_dir, capsys):
    from bench.studies import fitcache

    argv = ["--cache", "teacache-batch", "magcache", "--model", "micro", "--steps", "4"]
    argv += ["--cache-dir", str(shared_cache_dir), "--no-progress"]
    assert fitcache.main(argv) == 0
    out = capsys.readouterr().out
    assert "teacache-batch" in out and "coefficients" in out and "ratios" in out
    fits = sorted(p.name for p in (shared_cache_dir / "teacache-fit").iterdir())
    assert fitcache.main(argv) == 0  # read from the cache, not refitted
    assert sorted(p.name for p in (shared_cache_dir / "teacache-fit").iterdir()) == fits
