"""Cells are never lost while a run reports success: a nonfinite cell is stored once and not
rerun, a cell with neither a record nor a failure record makes the exit code 1, and
``bench.train`` ignores no option."""

from __future__ import annotations

import pytest
import torch

import bench.pipeline as pipeline
import bench.run as runner
from bench import grid
from bench.train import _parser, config_from_args

MICRO = '[[cell]]\nmodel = "micro"\nsteps = 2\nsamples = 16\n'


def _nan_generate(*a, timings, **k):
    timings.append(0.1)
    return torch.full((16, 1, 8, 8), float("nan")), 2


def test_a_nonfinite_cell_is_stored_once_flagged_and_not_rerun(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "s.toml"
    cfg.write_text(MICRO)
    argv = ["--config", str(cfg), "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path)]
    monkeypatch.setattr(pipeline, "generate", _nan_generate)
    assert grid.main(argv) == 0
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "## Nonfinite cells (1; stored, never scored)" in summary
    assert not (tmp_path / "out" / "corrupt").exists()
    ran = []
    monkeypatch.setattr(runner, "run_cell", lambda *a, **k: ran.append(1) or {})
    assert grid.main(argv) == 0 and ran == []  # counted as done
    assert grid.main([*argv, "--dry-run"]) == 0
    assert " done " in capsys.readouterr().out


def test_a_cell_with_neither_record_nor_failure_record_exits_1(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "s.toml"
    cfg.write_text(MICRO)

    def boom(*a, **k):
        raise RuntimeError("the cell broke")

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runner, "run_cell", boom)
    monkeypatch.setattr(runner, "write_failure", disk_full)
    argv = ["--config", str(cfg), "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path)]
    assert grid.main(argv) == 1
    assert "1 cell(s) have neither a record nor a failure record" in capsys.readouterr().out


def test_bench_train_passes_text_and_refuses_weights_its_recipe_ignores():
    p = _parser()
    assert config_from_args(p.parse_args(["--text", "minilm"])).text == "minilm"
    assert config_from_args(p.parse_args([])).text is None
    uem = config_from_args(p.parse_args(["--recipe", "uem", "--lambda-u", "2"]))
    assert uem.lambda_u == 2.0 and uem.lambda_ual == 1.0
    with pytest.raises(ValueError, match="--lambda-u has no effect with recipe 'full'"):
        config_from_args(p.parse_args(["--lambda-u", "2"]))
    with pytest.raises(ValueError, match="unknown text encoder 'bogus'"):
        config_from_args(p.parse_args(["--text", "bogus"]))


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        (dict(seed=2**40), r"seed must be an integer in \[0, 2\*\*32\)"),
        (dict(samples=10**12), "samples must be <= 100,000"),
        (dict(text="minilm", dataset="mnist"), "'mnist' has none"),
        (dict(guidance=1.0, dataset="celeba64"), "'celeba64' has no class labels"),
    ],
)
def test_cell_fields_that_would_fail_at_run_time_are_refused_at_read(fields, match):
    from bench.cell import Cell

    with pytest.raises(ValueError, match=match):
        Cell(**fields)


def test_the_report_skips_a_record_that_parses_but_is_wrong(tmp_path, capsys, caplog):
    from bench import report

    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "bad.json").write_text("{}")
    with pytest.raises(SystemExit) as e:
        report.main(["--grid", str(tmp_path)])
    assert e.value.code == 2 and "no records" in capsys.readouterr().err
    assert "skipping record" in caplog.text and "bad.json" in caplog.text


def test_a_sweep_file_with_a_utf8_bom_reads(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_bytes(b"\xef\xbb\xbf" + MICRO.encode())
    (cell,) = grid.load_config(cfg)
    assert cell.model == "micro" and cell.steps == 2
