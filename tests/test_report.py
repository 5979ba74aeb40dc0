from __future__ import annotations

import numpy as np
import pytest

from bench.grid import main as grid_main
from bench.report import main, pareto_front, wall_ratios

SWEEP = """
[[cell]]
model = "micro"
sampler = "ddim"
steps = 3
samples = 40

[sweep]
model = "micro"
recipe = "uem"
policy = "uem"
knob = [0.0, 0.3]
sampler = "ddim"
steps = 3
samples = 40
"""


def test_pareto_front_keeps_only_undominated_points():
    x = np.array([0.5, 0.2, 0.8, 0.2, 1.0, 0.6])
    y = np.array([10.0, 30.0, 5.0, 20.0, 6.0, 12.0])
    assert pareto_front(x, y).tolist() == [3, 0, 2]  # (0.2, 20), (0.5, 10), (0.8, 5)


@pytest.fixture(scope="module")
def grid_dir(tmp_path_factory, shared_cache_dir):
    root = tmp_path_factory.mktemp("grid")
    cfg = root / "sweep.toml"
    cfg.write_text(SWEEP)
    out = root / "out"
    assert (
        grid_main(["--config", str(cfg), "--out", str(out), "--cache-dir", str(shared_cache_dir)])
        == 0
    )
    return out


def test_report_writes_every_figure(grid_dir, tmp_path):
    assert main(["--grid", str(grid_dir), "--out", str(tmp_path)]) == 0
    for name in ("fid_vs_flops", "wall_vs_flops", "exit_heatmap", "samples"):
        for ext in ("png", "svg"):
            f = tmp_path / f"{name}.{ext}"
            assert f.exists() and f.stat().st_size > 1000, f
    assert (tmp_path / "fid_vs_flops.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (grid_dir / "table.parquet").exists() and (grid_dir / "table.csv").exists()


def test_report_errors_are_one_line(tmp_path, grid_dir, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--grid", str(tmp_path / "nothing")])
    assert e.value.code == 2 and "no records" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--grid", str(grid_dir), "--out", str(tmp_path), "--cells", "no-such-cell"])
    assert e.value.code == 2 and "no cell label contains" in capsys.readouterr().err


def test_wall_ratio_needs_a_matching_full_depth_reference():
    import pandas as pd

    df = pd.DataFrame(
        [
            dict(
                dataset="d",
                model="m",
                sampler="ddim",
                steps=3,
                device="cpu",
                policy=p,
                recipe=r,
                prune_ratio=0.0,
                guidance=None,
                seconds_per_image=s,
            )
            for p, r, s in [("full", "full", 2.0), ("uem", "uem", 1.0)]
        ]
    )
    m = wall_ratios(df)
    assert m.set_index("policy").wall_ratio.to_dict() == {"full": 1.0, "uem": 0.5}
    assert len(wall_ratios(df.assign(steps=[3, 4]))) == 1  # uem at 4 steps has no reference


def test_guidance_figure_needs_two_scales(tmp_path):
    import matplotlib
    import pandas as pd

    from bench.report import plot_fid_vs_guidance

    matplotlib.use("Agg")
    rows = [
        dict(policy="full", cfg_exit_together=False, guidance=w, fid=f, flop_ratio_per_call=1.0)
        for w, f in [(1.0, 2.0), (2.0, 5.0)]
    ]
    assert plot_fid_vs_guidance(pd.DataFrame(rows[:1]), tmp_path) == []
    paths = plot_fid_vs_guidance(pd.DataFrame(rows), tmp_path)
    assert [p.name for p in paths] == ["fid_vs_guidance.png", "fid_vs_guidance.svg"]


def test_fid_vs_nfe_averages_seeds_and_needs_two_step_counts(tmp_path):
    import matplotlib
    import pandas as pd

    from bench.report import plot_fid_vs_nfe

    matplotlib.use("Agg")
    base = dict(policy="full", prune_ratio=0.0, recipe="full", dataset="digits", model="tiny")

    def row(solver, steps, seed, fid, spacing=None):
        return {**base, "solver": solver, "steps": steps, "nfe": steps, "seed": seed,
                "fid": fid, "spacing": spacing}  # fmt: skip

    one = pd.DataFrame([row("ddim", 10, 0, 9.0), row("ddim", 10, 1, 11.0)])
    assert plot_fid_vs_nfe(one, tmp_path) == []  # one step count: no line to draw
    df = pd.DataFrame(
        [
            row("ddim", 10, 0, 9.0),
            row("ddim", 10, 1, 11.0),
            row("ddim", 20, 0, 8.0),
            row("dpm-solver++ logSNR", 10, 0, 12.0, "logSNR"),
            row("dpm-solver++ logSNR", 20, 0, 9.0, "logSNR"),
            row("ddpm", 1000, 0, 5.0),
            row("ddpm", 1000, 1, 7.0),
        ]
    )
    import matplotlib.pyplot as plt

    made = []
    real = plt.Axes.plot
    plt.Axes.plot = lambda ax, x, y, *a, **k: made.append((list(x), list(y), k.get("label")))
    try:
        paths = plot_fid_vs_nfe(df, tmp_path)
    finally:
        plt.Axes.plot = real
    assert [p.name for p in paths] == ["fid_vs_nfe.png", "fid_vs_nfe.svg"]
    assert ([10, 20], [10.0, 8.0], "ddim (2 seeds)") in made  # seeds averaged per NFE
    assert ([10, 20], [12.0, 9.0], "dpm-solver++ logSNR") in made  # the chosen-spacing panel


def test_fid_vs_prune_draws_one_line_per_recipe_through_its_ratios(tmp_path):
    import matplotlib
    import pandas as pd

    from bench.report import _prune_recipe, plot_fid_vs_prune

    matplotlib.use("Agg")
    base = dict(policy="full", recipe="full", cache="none", run="ddim-20",
                prune_importance="diff-pruning")  # fmt: skip

    def row(ratio, fid, flops, **kw):
        return {**base, "prune_ratio": ratio, "fid": fid, "flop_ratio_per_call": flops, **kw}

    one = pd.DataFrame([row(0.0, 10.0, 1.0), row(0.3, 11.0, 0.66)])
    assert plot_fid_vs_prune(one, tmp_path) == []  # one recipe at one ratio: nothing to compare
    df = pd.DataFrame(
        [
            row(0.0, 10.0, 1.0),
            row(0.3, 11.0, 0.66, prune_finetune_steps=2000.0),
            row(0.5, 14.0, 0.45, prune_finetune_steps=2000.0),
            row(0.5, 16.0, 0.45, prune_finetune_steps=2000.0, prune_scratch=True),
            row(0.3, 12.0, 0.66, prune_importance="magnitude", prune_distill=1.0),
        ]
    )
    labels = [_prune_recipe(r) for _, r in df.iterrows()]
    assert labels[1:] == ["ft2000", "ft2000", "ft2000 scratch", "magnitude kd1"]
    # A field at PruneConfig's default names the same model as leaving it unset.
    assert _prune_recipe(row(0.3, 11.0, 0.66, prune_distill=0.0, prune_rounds=1.0)).startswith(
        "default"
    )
    paths = plot_fid_vs_prune(df, tmp_path)
    assert [p.name for p in paths] == ["fid_vs_prune.png", "fid_vs_prune.svg"]
    assert paths[0].stat().st_size > 1000
