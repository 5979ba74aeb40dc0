"""Samplers against closed-form Gaussian data and against diffusers' reference schedulers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import samplers
import samplers.grid
from samplers import make_schedule

MU, STD = 0.7, 0.4


def gaussian_eps(schedule):
    """Optimal eps for data N(MU, STD^2).

    E[eps | x_t] = sigma (x_t - a MU) / (a^2 STD^2 + sigma^2), with a = alpha_t, sigma = sigma_t.
    """

    def eps(x, t, cond):
        table = schedule.alphas_cumprod.numpy()
        ab = torch.from_numpy(np.interp(t.double().numpy(), np.arange(schedule.T), table))
        ab = ab.to(x.dtype)
        ab = ab.view(-1, *([1] * (x.ndim - 1)))
        a, s = ab.sqrt(), (1 - ab).sqrt()
        return s * (x - a * MU) / (a**2 * STD**2 + s**2)

    return eps


def run(name, steps, schedule, n=20000, **kw):
    """Sample N(MU, STD^2) data with the exact eps, in float64."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(n, 1, 2, 2, generator=g, dtype=torch.float64)
    out = samplers.sample(name, gaussian_eps(schedule), schedule, noise, steps, generator=g, **kw)
    return out, noise


@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
# Step counts at which each solver's discretisation error on this problem is below the tolerance.
# (At 12 NFE the noise-prediction DPM-Solver-2/3 overshoot the std by 20%; DPM-Solver++ exists
# because of that, Lu et al. 2022b, Sec. 4.)
@pytest.mark.parametrize(
    ("name", "steps", "kw"),
    [
        ("ddpm", 1000, {}),
        ("ddim", 100, {}),
        ("ddim", 1000, {"eta": 1.0}),
        ("dpm-solver", 150, {"order": 1}),
        ("dpm-solver", 60, {"order": 2}),
        ("dpm-solver", 30, {"order": 3}),
        ("dpm-solver++", 50, {}),
        ("dpm-solver++", 30, {"order": 3, "spacing": "logSNR"}),
        ("dpm-solver-multistep", 30, {"order": 3}),
        ("dpm-solver++-singlestep", 30, {"order": 3}),
        ("unipc-bh1", 20, {"order": 3}),
        ("unipc-bh2", 20, {"order": 2}),
        ("dpm-solver++-sde", 100, {}),
        ("euler-maruyama", 1000, {}),
    ],
)
def test_samplers_recover_gaussian_data(schedule_name, name, steps, kw):
    schedule = make_schedule(schedule_name)
    if name == "euler-maruyama" and schedule_name == "cosine":
        # beta(t) near t = 1 is about 7,000 on the cosine table: refused, not diverged.
        with pytest.raises(ValueError, match="euler-maruyama is unstable"):
            run(name, steps, schedule, **kw)
        return
    out, _ = run(name, steps, schedule, **kw)
    x = out.samples
    # Stated tolerance: mean within 0.02, std within 5%. With 20k draws the standard error of the
    # mean is STD / sqrt(8e4) ~ 0.0014, so a miss is the solver's, not the sampling noise's.
    assert abs(x.mean().item() - MU) < 0.02, x.mean()
    assert abs(x.std().item() / STD - 1) < 0.05, x.std()
    assert out.nfe == steps


def test_dpm_solver_pp_beats_ddim_at_10_steps():
    schedule = make_schedule("linear")
    # The ODE map is affine for Gaussian data: compare its slope (output std / noise std) with STD.
    errs = {}
    for name in ("ddim", "dpm-solver++"):
        out, noise = run(name, 10, schedule)
        slope = out.samples.std() / noise.std()
        errs[name] = abs(slope.item() - STD) + abs(out.samples.mean().item() - MU)
    assert errs["dpm-solver++"] < errs["ddim"], errs


def test_ddim_eta1_matches_ddpm():
    """DDIM with eta = 1 is DDPM ancestral sampling (Song et al. 2021, Sec. 4.1)."""
    schedule = make_schedule("linear")
    a, _ = run("ddpm", 25, schedule, n=64)
    b, _ = run("ddim", 25, schedule, n=64, eta=1.0)
    torch.testing.assert_close(a.samples, b.samples, rtol=1e-8, atol=1e-8)


def _toy_eps(x, t, cond):
    """The Gaussian optimum plus a nonlinear, time-dependent term scaled by alpha_t, so that
    x0_hat stays bounded and the trajectories are not affine."""
    schedule = make_schedule("linear")
    a = schedule.alpha_bar(t.round().long()).sqrt().to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
    return gaussian_eps(schedule)(x, t, cond) + 0.2 * a * torch.sin(3 * x)


@pytest.mark.parametrize("steps", [10, 20, 50])
def test_ddim_matches_diffusers(steps):
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
        prediction_type="epsilon",
    )
    sch.set_timesteps(steps)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    ours = samplers.sample("ddim", _toy_eps, make_schedule("linear"), x.clone(), steps)
    ref = x.clone()
    assert torch.equal(sch.timesteps, make_schedule("linear").timesteps(steps))
    for t in sch.timesteps:
        eps = _toy_eps(ref, torch.full((4,), float(t)), None)
        ref = sch.step(eps, t, ref, eta=0.0).prev_sample
    assert (ours.samples - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("steps", [10, 20, 25])
def test_dpm_solver_pp_matches_diffusers(steps):
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        timestep_spacing="trailing",
        final_sigmas_type="zero",
        lower_order_final=True,
    )
    sch.set_timesteps(steps)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    ours = samplers.sample("dpm-solver++", _toy_eps, make_schedule("linear"), x.clone(), steps)
    assert torch.equal(sch.timesteps, make_schedule("linear").timesteps(steps))
    ref = x.clone()
    for t in sch.timesteps:
        eps = _toy_eps(ref, torch.full((4,), float(t)), None)
        ref = sch.step(eps, t, ref).prev_sample
    assert (ours.samples - ref).abs().max().item() <= 1e-4


def test_callback_sees_every_step():
    seen = []
    schedule = make_schedule("linear")
    samplers.sample(
        "dpm-solver", _toy_eps, schedule, (2, 1, 4, 4), 9, callback=seen.append, order=3
    )
    # 9 NFE at order 3 split as orders [3, 3, 2, 1] (DPM-Solver-fast).
    assert [d["step"] for d in seen] == [0, 1, 2, 3]
    assert seen[-1]["nfe"] == 9
    assert {"t", "x", "denoised"} <= set(seen[0])


def test_shape_draws_noise_from_generator():
    schedule = make_schedule("linear")
    a = samplers.sample(
        "ddim", _toy_eps, schedule, (3, 1, 4, 4), 5, generator=torch.Generator().manual_seed(5)
    )
    b = samplers.sample(
        "ddim", _toy_eps, schedule, (3, 1, 4, 4), 5, generator=torch.Generator().manual_seed(5)
    )
    assert torch.equal(a.samples, b.samples)


def test_cfg_wrapper_combines_halves():
    def eps(x, t, cond):
        return x * 0 + cond.view(-1, 1, 1, 1).to(x.dtype)

    cfg = samplers.ClassifierFreeGuidance(eps, scale=3.0, null_cond=10)
    out = cfg(torch.zeros(2, 1, 2, 2), torch.zeros(2), torch.tensor([1, 4]))
    # eps_u + 3 (eps_c - eps_u) = 10 + 3 (c - 10)
    assert out[:, 0, 0, 0].tolist() == [10 + 3 * (1 - 10), 10 + 3 * (4 - 10)]


def test_schedules_are_sane():
    for name in samplers.SCHEDULES:
        s = make_schedule(name)
        ab = s.alphas_cumprod
        assert bool((ab[1:] < ab[:-1]).all()) and 0 < ab[-1] < 1e-2 < ab[0] <= 1
        t = torch.linspace(s.t_min, 1.0, 37, dtype=torch.float64)
        torch.testing.assert_close(s.inverse_lambda(s.marginal_lambda(t)), t, rtol=1e-6, atol=1e-6)
        # Continuous time agrees with the discrete table on the grid.
        grid = (torch.arange(s.T, dtype=torch.float64) + 1) / s.T
        torch.testing.assert_close(s.marginal_alpha(grid) ** 2, ab)
        assert math.isclose(s.continuous_to_model_time(torch.tensor(1.0)).item(), s.T - 1)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda s: samplers.get_sampler("heun"),
            "valid choices: ddpm, ddim, dpm-solver, dpm-solver",
        ),
        (
            lambda s: samplers.sample("ddim", _toy_eps, s, (2, 1, 4, 4), 0),
            r"steps must be in \[1, 1000\]",
        ),
        (lambda s: samplers.sample("ddim", _toy_eps, s, (2, 1, 4, 4), 1001), r"\[1, 1000\]"),
        (lambda s: samplers.sample("ddpm", _toy_eps, s, (2, 1, 4, 4), 2.5), "steps must be an int"),
        (lambda s: samplers.sample("ddim", _toy_eps, "linear", (2, 1, 4, 4), 5), "VPSchedule"),
        (lambda s: samplers.sample("ddim", _toy_eps, s, (0, 1, 4, 4), 5), "positive sizes"),
        (
            lambda s: samplers.sample("ddim", lambda x, t, c: x[:, :, :2], s, (2, 1, 4, 4), 5),
            "input's shape",
        ),
        (
            lambda s: samplers.sample("ddim", _toy_eps, s, (2, 1, 4, 4), 5, cond=torch.zeros(3)),
            "batch",
        ),
        (
            lambda s: samplers.sample("dpm-solver", _toy_eps, s, (2, 1, 4, 4), 5, order=4),
            "valid choices: 1, 2, 3",
        ),
        (
            lambda s: samplers.sample("dpm-solver++", _toy_eps, s, (2, 1, 4, 4), 2, order=3),
            "order 3 needs at least 3 steps",
        ),
        (
            lambda s: samplers.sample("ddim", _toy_eps, s, (2, 1, 4, 4), 5, spacing="karras"),
            "valid choices: trailing, leading, linspace, logSNR",
        ),
        (
            lambda s: samplers.sample("ddim", _toy_eps, s, (2, 1, 4, 4), 5, end="one"),
            "valid choices: zero, eps",
        ),
        (
            lambda s: samplers.sample(
                "ddim", _toy_eps, s, (2, 1, 4, 4), 5, spacing="linspace", end="eps"
            ),
            "already ends at timestep 0",
        ),
        (
            lambda s: samplers.sample("ddim", _toy_eps, s, (2, 1, 4, 4), 2, timesteps=[5, 9]),
            "strictly descending",
        ),
        (
            lambda s: samplers.sample("unipc-bh1", _toy_eps, s, (2, 1, 4, 4), 5, variant="bh3"),
            "valid choices: bh1, bh2",
        ),
        (lambda s: samplers.check_options("ddim", 5, order=2), "has no order option"),
        (
            lambda s: samplers.check_options("unipc-bh2", 5, taylor_3m=True),
            "no taylor_3m option; samplers with one: dpm-solver\\+\\+, dpm-solver-multistep",
        ),
        (lambda s: samplers.check_options("dpm-solver++-sde", 5, order=3), "valid choices: 1, 2"),
        (lambda s: samplers.sample("ddim", _toy_eps, s, (2, 1, 4, 4), 5, eta=-1.0), "eta"),
        (lambda s: make_schedule("sigmoid"), "valid choices: linear, cosine"),
    ],
)
def test_bad_arguments_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call(make_schedule("linear"))


# ----- cross-checks against diffusers at step counts that divide T and ones that do not -----
COUNTS = [3, 7, 10, 13, 20]


def _diffusers_loop(sch, x, timesteps=None, **step_kw):
    ref = x.clone()
    for t in sch.timesteps if timesteps is None else timesteps:
        eps = _toy_eps(ref, torch.full((ref.shape[0],), float(t)), None)
        ref = sch.step(eps, t, ref, **step_kw).prev_sample
    return ref


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
@pytest.mark.parametrize("steps", COUNTS)
def test_discrete_spacings_are_diffusers_ddim_grids(spacing, steps):
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    sch.set_timesteps(steps)
    ours = samplers.grid.discrete_timesteps(make_schedule("linear"), steps, spacing)
    assert sch.timesteps.tolist() == ours


@pytest.mark.parametrize(
    ("spacing", "steps"),
    # diffusers' DDIM steps from t to t - T // steps, which is the next grid point only on the
    # leading grid, and on the trailing grid when steps divides T; on the others it lands off
    # the grid (and ends at timestep 0, not at clean data). We step to the next grid point, as
    # Song et al. 2021 and Lin et al. 2024 do, so those cases are not comparable.
    [("leading", n) for n in COUNTS] + [("trailing", n) for n in (10, 20, 25)],
)
def test_ddim_matches_diffusers_on_each_spacing(spacing, steps):
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.DDIMScheduler(
        num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=True, timestep_spacing=spacing
    )
    sch.set_timesteps(steps)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = samplers.sample(
        "ddim", _toy_eps, make_schedule("linear"), x.clone(), steps, spacing=spacing
    )
    ref = _diffusers_loop(sch, x, eta=0.0)
    assert (ours.samples - ref).abs().max().item() <= 1e-4


def _dpm_scheduler(diffusers, algorithm, order, lower_order_final, spacing="trailing"):
    # diffusers refuses to end noise prediction at sigma = 0; it stops at timestep 0 ("eps").
    final = "zero" if algorithm.endswith("++") else "sigma_min"
    return diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        algorithm_type=algorithm,
        solver_order=order,
        solver_type="midpoint",
        timestep_spacing=spacing,
        final_sigmas_type=final,
        lower_order_final=lower_order_final,
    )


@pytest.mark.parametrize("steps", COUNTS)
@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("lower_order_final", [True, False])
@pytest.mark.parametrize(
    ("algorithm", "name"), [("dpmsolver++", "dpm-solver++"), ("dpmsolver", "dpm-solver-multistep")]
)
def test_dpm_solver_multistep_matches_diffusers(algorithm, name, order, lower_order_final, steps):
    diffusers = pytest.importorskip("diffusers")
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    # diffusers' multistep "linspace" grid (n + 1 points, the last dropped) is not Lin et al.'s;
    # it is passed explicitly. Its trailing grid is ours.
    for spacing in ("trailing", "linspace"):
        sch = _dpm_scheduler(diffusers, algorithm, order, lower_order_final, spacing)
        sch.set_timesteps(steps)
        grid = {"spacing": "trailing"} if spacing == "trailing" else {}
        kw = {"timesteps": sch.timesteps.tolist()} if spacing == "linspace" else grid
        ours = samplers.sample(
            name, _toy_eps, make_schedule("linear"), x.clone(), steps,
            order=order, lower_order_final=lower_order_final,
            end="zero" if algorithm.endswith("++") else "eps", **kw,
        )  # fmt: skip
        ref = _diffusers_loop(sch, x)
        assert (ours.samples - ref).abs().max().item() <= 1e-4, spacing


@pytest.mark.parametrize("steps", [7, 20])
def test_sde_dpm_solver_pp_matches_diffusers(steps):
    """Same generator, same draw order: the noise of every step matches too (diffusers draws it
    in float32, so the comparison runs in float32)."""
    diffusers = pytest.importorskip("diffusers")
    sch = _dpm_scheduler(diffusers, "sde-dpmsolver++", 2, True)
    sch.set_timesteps(steps)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    ours = samplers.sample(
        "dpm-solver++-sde", _toy_eps, make_schedule("linear"), x.clone(), steps,
        spacing="trailing", generator=torch.Generator().manual_seed(9),
    )  # fmt: skip
    ref = _diffusers_loop(sch, x, generator=torch.Generator().manual_seed(9))
    assert (ours.samples - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("steps", COUNTS)
@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize(("variant", "end"), [("bh1", "eps"), ("bh2", "eps"), ("bh2", "zero")])
def test_unipc_matches_diffusers(variant, end, order, steps):
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=1000,
        solver_order=order,
        solver_type=variant,
        predict_x0=True,
        timestep_spacing="trailing",
        final_sigmas_type="zero" if end == "zero" else "sigma_min",
        lower_order_final=True,
    )
    sch.set_timesteps(steps)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ours = samplers.sample(
        f"unipc-{variant}", _toy_eps, make_schedule("linear"), x.clone(), steps,
        order=order, spacing="trailing", end=end,
    )  # fmt: skip
    ref = _diffusers_loop(sch, x)
    assert (ours.samples - ref).abs().max().item() <= 1e-4


def test_unipc_bh1_to_clean_data_stays_finite():
    """diffusers' bh1 with final_sigmas_type="zero" returns NaN: on the last step B(h) = h is
    infinite and multiplies a zero correction. The step to clean data is the x0 jump here."""
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=1000, solver_type="bh1", timestep_spacing="trailing"
    )
    sch.set_timesteps(5)
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert _diffusers_loop(sch, x).isnan().all()  # the quirk this suite does not reproduce
    ours = samplers.sample("unipc-bh1", _toy_eps, make_schedule("linear"), x, 5, spacing="trailing")
    assert ours.samples.isfinite().all()
