"""Plugins (bench.plugins): methods from outside the package, on the command line and in every
worker; registration refuses duplicates and wrong types; a broken plugin is one line, exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from bench import plugins
from bench.grid import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plugin"


def test_the_example_plugin_runs_through_a_two_worker_local_sweep(tmp_path, shared_cache_dir):
    """The example package (a new exit rule and a new cache) is named on the command line; the
    two spawned workers load it themselves. A separate process, so this one's registries stay
    as they are."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLE), str(ROOT)])}
    cmd = [sys.executable, "-m", "bench.grid", "--plugin", "diffcompress_example"]
    cmd += ["--config", str(EXAMPLE / "sweep.toml"), "--out", str(out)]
    cmd += ["--cache-dir", str(shared_cache_dir), "--executor", "local", "--workers", "2"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    by = {(r["policy"], r["cache"]): r for r in records}
    assert set(by) == {("settled", "none"), ("full", "stride")}
    assert by["full", "stride"]["flop_ratio_per_call"] < 0.7  # every other call served whole
    assert 0 < by["settled", "none"]["layer_ratio"] <= 1


def test_a_plugin_that_fails_to_import_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--plugin", "no_such_plugin_module", "--out", str(tmp_path / "o"), "--dry-run"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert "plugin 'no_such_plugin_module' failed to import: ModuleNotFoundError" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


@pytest.fixture
def scratch_registries():
    """The registries a test registers into, restored afterwards."""
    from adaptive.policies import POLICIES
    from caching.registry import CACHES

    saved = [(reg, dict(reg)) for reg in (POLICIES, CACHES)]
    yield POLICIES, CACHES
    for reg, before in saved:
        reg.clear()
        reg.update(before)


def test_register_refuses_duplicates_wrong_types_and_unknown_kinds(scratch_registries):
    from adaptive.policies import UEM, Static

    with pytest.raises(plugins.PluginError, match="policy 'uem' is already registered"):
        plugins.register("policy", UEM)
    with pytest.raises(plugins.PluginError, match="must be a subclass of ExitPolicy"):
        plugins.register("policy", object, "test-object")
    with pytest.raises(plugins.PluginError, match="unknown plugin kind 'gizmo'; valid choices"):
        plugins.register("gizmo", UEM)

    class Renamed(Static):
        name = "test-static"

    assert plugins.register("policy", Renamed) == "test-static"
    from bench.cell import Cell

    assert Cell(model="micro", policy="test-static", knob=1).policy == "test-static"


def test_installed_entry_points_are_loaded_once(tmp_path, monkeypatch, scratch_registries):
    (tmp_path / "ep_plugin.py").write_text(
        "from adaptive.policies import Static\n"
        "from bench.plugins import register\n"
        "class P(Static):\n    name = 'test-ep'\n"
        "register('policy', P)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = EntryPoint("ep", "ep_plugin", plugins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(plugins, "entry_points", lambda group: [ep])
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    monkeypatch.setattr(plugins, "_loaded", set())
    plugins.load_plugins()
    plugins.load_plugins()  # a second load does not register again (that would be refused)
    assert "test-ep" in scratch_registries[0]


def test_policy_and_cache_options_come_from_a_sweep_file_as_tables(tmp_path):
    """Every constructor keyword of a policy or cache is settable (policy_args / cache_args),
    validated by building it; an empty table is unset, so keys of cells without one stay."""
    from bench.cell import Cell
    from bench.grid import load_config

    path = tmp_path / "sweep.toml"
    path.write_text(
        '[[sweep]]\nmodel = "micro"\npolicy = "duodiff"\nknob = [0.3, 0.5]\n'
        "policy_args = {shallow = 2}\n"
    )
    cells = load_config(path)
    assert [c.exit_spec.build().shallow for c in cells] == [2, 2]
    assert "{shallow=2}" in cells[0].label() and cells[0].key != cells[1].key
    assert Cell(model="micro", policy_args={}).key == Cell(model="micro").key
    with pytest.raises(ValueError, match="unexpected keyword argument 'bogus'"):
        Cell(model="micro", policy="duodiff", knob=0.5, policy_args={"bogus": 1})
    with pytest.raises(ValueError, match="cache_args may not set 'branch'"):
        Cell(model="micro", cache="deepcache", cache_args={"branch": 1})
    with pytest.raises(ValueError, match="takes no option nope"):
        Cell(model="micro", cache="deepcache", cache_args={"nope": 1})
