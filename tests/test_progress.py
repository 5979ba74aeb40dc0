"""The sweep's progress bar: cells priced by their work, phases named, log lines above it."""

from __future__ import annotations

import logging

import pytest

from bench.cache import ArtifactCache
from bench.cell import Cell
from bench.progress import PHASES, SweepProgress, estimated_cost


def test_cost_follows_the_work(tmp_path):
    cache = ArtifactCache(tmp_path, shipped=())
    base = Cell(model="micro", steps=10, samples=100)
    plain = estimated_cost(base, cache)
    assert estimated_cost(Cell(model="micro", steps=100, samples=100), cache) > plain
    assert estimated_cost(Cell(model="tiny", steps=10, samples=100), cache) > plain
    # Exits at 0.5 of the FLOPs sample cheaper but calibrate first.
    exits = Cell(model="micro", recipe="uem", policy="uem", target_flop_ratio=0.5, steps=10)
    assert estimated_cost(exits, cache) > 0
    # Training is priced only while the checkpoint is missing.
    from bench.cell import cell_train_config

    key = cell_train_config(base).key
    (tmp_path / "checkpoint").mkdir()
    missing = estimated_cost(base, cache)
    (tmp_path / "checkpoint" / f"{key}.safetensors").write_bytes(b"x")
    assert estimated_cost(base, cache) < missing
    # A pruned cell adds its fine-tune while the pruned model is missing.
    assert estimated_cost(Cell(model="micro", steps=10, samples=100, prune_ratio=0.3), cache) > (
        estimated_cost(base, cache)
    )


def test_bar_names_cell_and_phase_and_keeps_log_lines_apart(tmp_path, capsys):
    cells = [Cell(model="micro", steps=s, samples=16) for s in (2, 8)]
    progress = SweepProgress(cells, ArtifactCache(tmp_path, shipped=()))
    with progress.open() as bar:
        bar.start(cells[0])
        bar.phase("sample")
        assert bar.bar.desc == f"cell 1/2 {cells[0].label()}: sample"
        logging.getLogger("bench.run").warning("a log line")
        bar.done(cells[0])
        assert bar.bar.n == pytest.approx(progress.costs[cells[0].key] / 1e9)
        bar.start(cells[1])
        with pytest.raises(ValueError, match="valid choices: " + ", ".join(PHASES)):
            bar.phase("nap")
        bar.done(cells[1])
    assert bar.bar.n == pytest.approx(bar.bar.total)
    err = capsys.readouterr().err
    assert "a log line" in err
    # The log line stands on a line of its own, not glued to the bar's text.
    assert any(line.strip() == "a log line" for line in err.replace("\r", "\n").splitlines())
