"""Record keys are identities: every shipped sweep's cells keep their keys across refactors of
the cell and the sweep files (``tests/data/sweep_keys.json`` lists them; it changes only with a
commit that says which keys moved and why)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.grid import default_cells, load_config, quick_cells

ROOT = Path(__file__).resolve().parents[1]
KEYS = json.loads((ROOT / "tests" / "data" / "sweep_keys.json").read_text())


@pytest.mark.parametrize("name", sorted(KEYS))
def test_every_shipped_sweep_keeps_its_record_keys(name):
    if name == "default_cells()":
        cells = default_cells()
    elif name == "quick_cells()":
        cells = quick_cells()
    else:
        cells = load_config(ROOT / "bench" / "sweeps" / name)
    assert sorted({c.key for c in cells}) == KEYS[name]


def test_every_sweep_file_is_listed():
    files = {p.name for p in (ROOT / "bench" / "sweeps").glob("*.toml")}
    assert files <= set(KEYS), sorted(files - set(KEYS))


def test_the_default_sweep_is_its_toml_file():
    assert default_cells() == load_config(ROOT / "bench" / "sweeps" / "default.toml")
    assert {c.samples for c in default_cells(samples=64)} == {64}
