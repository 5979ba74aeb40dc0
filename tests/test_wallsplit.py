"""bench.studies.wallsplit: the executor's wall-clock split by component adds up, the timers
leave the executor as they found it, and bad arguments exit 2; bench.studies.prunewall times
each rounded pruned shape; bench.studies.retime re-times records."""

from __future__ import annotations

import pandas as pd
import pytest

from bench.studies import wallsplit


def test_split_adds_up_and_instruments_nothing_afterwards(shared_cache_dir, tmp_path):
    out = tmp_path / "ws"
    argv = ["--model", "micro", "--policies", "full", "uem", "--batch", "4", "--steps", "2"]
    argv += ["--repeats", "1", "--out", str(out), "--cache-dir", str(shared_cache_dir)]
    assert wallsplit.main(argv) == 0
    df = pd.read_csv(out / "wallsplit.csv")
    assert df["policy"].tolist() == ["full", "uem"]
    parts = df[list(wallsplit.COMPONENTS)]
    assert (parts.drop(columns="other") >= 0).all().all()
    assert parts.sum(axis=1).round(9).tolist() == df["wall_ratio"].round(9).tolist()
    full, uem = df.iloc[0], df.iloc[1]
    assert full["exit heads"] == 0 and uem["exit heads"] > 0  # only uem reads its UEMs
    assert full["flop_ratio"] == pytest.approx(1.0) and uem["flop_ratio"] < 1.0
    assert (out / "wallsplit.png").stat().st_size > 0


def test_instrumentation_is_removed():
    import torch

    from adaptive.policies import make_policy
    from blockloop import EarlyExitDenoiser
    from blockloop import executor as executor_mod
    from models import make_model

    model = make_model("micro", 8, 1, exit_heads="uem")
    ex = EarlyExitDenoiser(model, make_policy("uem", 0.5), 1000)
    keep = executor_mod._Run.keep
    with wallsplit._instrumented(ex, wallsplit._Timers()):
        ex(torch.randn(2, 1, 8, 8), torch.full((2,), 500.0))
    assert "run_block" not in vars(model) and "decide" not in vars(ex.policy)
    assert executor_mod._Run.keep is keep and "_exit" not in vars(ex)


@pytest.mark.parametrize("argv", [["--policies", "nope"], ["--batch", "0"], ["--target", "2"]])
def test_bad_arguments_exit_2(argv, tmp_path):
    with pytest.raises(SystemExit) as e:
        wallsplit.main([*argv, "--model", "micro", "--out", str(tmp_path / "ws")])
    assert e.value.code == 2 and not (tmp_path / "ws").exists()


def test_retime_reruns_each_record_with_its_knobs_and_times_it_again(shared_cache_dir, tmp_path):
    from bench.grid import main as grid_main
    from bench.studies import retime

    sweep = tmp_path / "s.toml"
    sweep.write_text(
        '[[cell]]\nmodel = "micro"\nrecipe = "uem"\npolicy = "uem"\ntarget_flop_ratio = 0.7\n'
        'steps = 4\nsamples = 16\n\n[[cell]]\nmodel = "micro"\ncache = "fora"\n'
        "target_flop_ratio = 0.6\nsteps = 4\nsamples = 16\n"
    )
    out, cache = tmp_path / "g", ["--cache-dir", str(shared_cache_dir)]
    assert grid_main(["--config", str(sweep), "--out", str(out), *cache]) == 0
    assert retime.main(["--grid", str(out), *cache]) == 0
    df = pd.read_csv(out / "retime.csv")
    assert len(df) == 2 and (df["wall_ratio_per_call"] > 0).all()
    # The knobs the records ran, fixed (no calibration): the same 16 samples, the same FLOPs.
    assert df["flop_ratio_rerun"].tolist() == pytest.approx(df["flop_ratio_per_call"].tolist())
    assert (out / "retime.md").read_text().startswith("# Wall ratio per call, re-timed")


def test_retime_without_records_is_one_line(tmp_path, capsys):
    from bench.studies import retime

    with pytest.raises(SystemExit) as e:
        retime.main(["--grid", str(tmp_path / "none")])
    assert e.value.code == 2 and "no records to re-time" in capsys.readouterr().err


def test_prunewall_times_each_rounded_shape(shared_cache_dir, tmp_path):
    from bench.studies import prunewall

    out = tmp_path / "pw"
    argv = ["--model", "micro", "--round-to", "0", "16", "--batch", "4", "--repeats", "1"]
    assert prunewall.main([*argv, "--out", str(out), "--cache-dir", str(shared_cache_dir)]) == 0
    df = pd.read_csv(out / "prunewall.csv")
    assert df["round_to"].tolist() == [0, 16]
    assert df["mlp_width"].tolist() == [89, 80]  # 0.3 of 128 channels; rounded down to 5 x 16
    assert df["flop_ratio"].iloc[1] < df["flop_ratio"].iloc[0] < 1
    assert (df[["plain_wall", "executor_wall"]] > 0).all().all()


@pytest.mark.parametrize("argv", [["--round-to", "1"], ["--repeats", "0"], ["--ratio", "1.5"]])
def test_prunewall_bad_arguments_exit_2(argv, tmp_path):
    from bench.studies import prunewall

    with pytest.raises(SystemExit) as e:
        prunewall.main([*argv, "--model", "micro", "--out", str(tmp_path / "pw")])
    assert e.value.code == 2 and not (tmp_path / "pw").exists()


def test_retime_keeps_a_dydit_cells_target_and_fixes_its_knob():
    """DyDiT's target names its model (one per target); re-timing sets the knob it ran, so the
    cell must not calibrate it again (this cell was refused before)."""
    import dataclasses

    from bench.cell import Cell
    from bench.studies import retime

    cell = Cell(recipe="dydit", policy="dydit", target_flop_ratio=0.65)
    rec = {**dataclasses.asdict(cell), "key": cell.key, "knob_used": 0.7, "cache_knob_used": None}
    again = retime.cell_as_run(rec)
    assert again.knob == 0.7 and again.target_flop_ratio == 0.65
    assert not again.calibrates_exit and cell.calibrates_exit
