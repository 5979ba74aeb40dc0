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
    names = ("fid_vs_flops", "wall_vs_flops", "exit_heatmap", "samples", "psnr_vs_total_flops")
    for name in names:
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


def _rows(**over):
    """Records as load_table makes them: two seeds of one cell, a pruned cell, a second run."""
    import pandas as pd

    base = dict(dataset="digits", model="tiny", recipe="full", policy="full", prune_ratio=0.0,
                cache="none", extractor="cnn-digits-x", reference="train", kid=1.0,
                flop_ratio_per_call=1.0, method="full", accel="full")  # fmt: skip
    rows = [
        {**base, "label": "a", "run": "ddim-20", "seed": 0, "fid": 10.0,
         "flop_ratio_vs_reference": 0.02},
        {**base, "label": "a", "run": "ddim-20", "seed": 1, "fid": 12.0,
         "flop_ratio_vs_reference": 0.02},
        {**base, "label": "b", "run": "ddim-20", "seed": 0, "fid": 11.0, "prune_ratio": 0.3,
         "method": "prune0.3", "flop_ratio_per_call": 0.66, "flop_ratio_vs_reference": 0.013},
        {**base, "label": "c", "run": "dpm-solver++-10", "seed": 0, "fid": 8.0,
         "flop_ratio_vs_reference": 0.01},
    ]  # fmt: skip
    return pd.DataFrame([{**r, **over} for r in rows])


def test_seed_means_average_a_cell_over_its_seeds():
    from bench.report import seed_means

    d = seed_means(_rows()).set_index("label")
    assert d.loc["a", "fid"] == 11.0 and d.loc["a", "seeds"] == 2
    assert d.loc["a", "fid_sd"] == pytest.approx(2**0.5)
    assert d.loc["b", "fid_sd"] == 0.0 and d.loc["b", "seeds"] == 1
    # A single-seed cell's error bar is its bootstrap sd where the record has one.
    d = seed_means(_rows(fid_boot_sd=0.7)).set_index("label")
    assert d.loc["b", "fid_sd"] == 0.7 and d.loc["a", "fid_sd"] == pytest.approx(2**0.5)


def test_a_front_point_within_noise_of_the_cheaper_one_is_marked():
    import pandas as pd

    from bench.studies.plotting import within_noise_of_cheaper

    front = pd.DataFrame({"fid": [10.0, 9.5, 4.0], "fid_sd": [0.5, 0.5, 0.5]})
    assert within_noise_of_cheaper(front).tolist() == [False, True, False]


def test_fid_vs_flops_marks_pruned_cells_draws_spread_and_the_floor(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench import report

    figs = []
    real_save = report._save
    report._save = lambda fig, out, name: figs.append(fig) or real_save(fig, out, name)
    try:
        paths = report.plot_fid_vs_flops(_rows(), tmp_path, floor=3.28)
    finally:
        report._save = real_save
    assert [p.name for p in paths] == ["fid_vs_flops.png", "fid_vs_flops.svg"]
    (fig,) = figs
    a, b = fig.axes
    for ax in (a, b):
        # Each panel: both runs' markers (sampler visible), the floor line, error bars.
        assert any(ln.get_ydata()[0] == 3.28 for ln in ax.get_lines() if len(ln.get_ydata()))
        edges = [c.get_edgecolor() for c in ax.collections if hasattr(c, "get_offsets")]
        assert any(len(e) and tuple(e[0][:3]) == (0.0, 0.0, 0.0) for e in edges)  # pruned edge
    labels = b.get_legend().get_texts()
    text = [t.get_text() for t in labels]
    assert {"ddim-20", "dpm-solver++-10", "pruned model (black edge)"} <= set(text)
    assert any(t.startswith("FID floor 3.28") for t in text)
    # The legend sits outside the axes (anchored right of it).
    assert b.get_legend().get_bbox_to_anchor().x0 > b.get_window_extent().x1 - 1
    plt.close(fig)


def test_samples_share_one_run_and_seed_and_sit_beside_real_images(tmp_path, monkeypatch):
    import matplotlib
    import torch
    from PIL import Image

    matplotlib.use("Agg")
    from bench import report
    from bench.sampling import save_grid

    df = _rows(nonfinite=False)
    df["key"] = [f"k{i}" for i in range(len(df))]
    df["policy"] = df["method"] = ["full", "full", "uem", "full"]
    (tmp_path / "samples").mkdir()
    for k in df.key:
        save_grid(torch.zeros(100, 1, 8, 8), tmp_path / "samples" / f"{k}.png", nrow=10)
    assert report._sample_run(df) == "ddim-20"  # two policies there, one in dpm-solver++-10
    figs = []
    real_save = report._save
    monkeypatch.setattr(report, "_save", lambda f, o, n: figs.append(f) or real_save(f, o, n))
    paths = report.plot_samples(df, tmp_path, tmp_path, None)
    assert [p.name for p in paths] == ["samples.png", "samples.svg"]
    titles = [ax.get_title() for ax in figs[0].axes if ax.get_title()]
    # Real images first, then ddim-20's seed-0 cells (a, b): never seed 1 or the other run.
    assert titles[0] == "real training images" and len(titles) == 3
    assert titles[1].startswith("a\n") and titles[2].startswith("b\n")
    assert "seed 0" in figs[0]._suptitle.get_text()
    tile = report._tiles(Image.open(tmp_path / "samples" / "k0.png"), 8, 6)
    assert tile.size == ((6 * 9 + 1) * 4, (6 * 9 + 1) * 4)  # 6 x 6 samples, padding kept


def test_heatmap_panels_follow_the_policy_registry_with_fid_in_titles(tmp_path, monkeypatch):
    import pandas as pd

    from bench import report

    hist = {"t_edges": [0, 500, 1000], "counts": [[1, 0], [0, 1]]}
    rows = [
        dict(policy=p, prune_ratio=0.0, steps=20, seed=0, run="ddim-20", fid=f,
             flop_ratio_per_call=0.65, exit_histogram=hist)
        for p, f in [("uem", 8.0), ("calm", 20.0), ("static", 23.0)]
    ]  # fmt: skip
    seen = []
    monkeypatch.setattr(report, "heatmap_grid", lambda panels, out, name: seen.extend(panels))
    report.plot_exit_heatmaps(pd.DataFrame(rows), tmp_path)
    assert [t.split(" ")[0] for _, t in seen] == ["static", "calm", "uem"]  # registry order
    assert "FID 8.00" in seen[2][1]


def test_readme_figures_are_redrawn_from_records_and_missing_sweeps_named(
    grid_dir, tmp_path, shared_cache_dir, caplog
):
    import shutil

    from bench.studies import figures

    results = tmp_path / "results"
    shutil.copytree(grid_dir, results / "grid")
    docs = tmp_path / "docs"
    args = ["--results", str(results), "--docs", str(docs), "--cache-dir", str(shared_cache_dir)]
    assert figures.main(["--only", "grid", *args]) == 0
    assert sorted(p.name for p in docs.iterdir()) == sorted(
        f"{n}.png" for n in figures.SWEEPS["grid"].figures
    )
    with caplog.at_level("ERROR"):
        assert figures.main(["--only", "grid", "pruning", *args]) == 1  # pruning: no records
    assert "pruning: no records" in caplog.text and "bench/sweeps/pruning.toml" in caplog.text


def test_figures_copy_the_training_curve_and_name_its_command(tmp_path, caplog):
    from bench.studies import figures

    results, docs = tmp_path / "results", tmp_path / "docs"
    args = ["--only", "curve", "--results", str(results), "--docs", str(docs)]
    with caplog.at_level("ERROR"):
        assert figures.main(args) == 1
    assert "python -m bench.studies.curve --steps 10000 --batch-size 64" in caplog.text
    folder = results / "curve-mnist-b64"
    folder.mkdir(parents=True)
    (folder / "curve.csv").write_text("step,fid\n1,2\n")
    (folder / "curve.png").write_bytes(b"png")
    (folder / "samples_final.png").write_bytes(b"samples")
    assert figures.main(args) == 0
    assert (docs / "mnist_curve.png").read_bytes() == b"png"
    assert (docs / "mnist_samples_final.png").read_bytes() == b"samples"
