"""The documentation stays true: the README is short and its examples run, every example of the
extending page runs, the generated reference pages match the code, and the site builds."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("*.py"))


def _blocks(text: str) -> list[tuple[int, str, str]]:
    """(1-based line of the opening fence, language, code) of every fenced code block."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if m:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            blocks.append((i + 1, m.group(1), "\n".join(lines[i + 1 : end]) + "\n"))
            i = end
        i += 1
    return blocks


def _readme_block(lang: str) -> str:
    return next(code for _, language, code in _blocks(README.read_text()) if language == lang)


def test_readme_is_short_and_shows_its_examples_early():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    starts = {lang: line for line, lang, _ in reversed(_blocks(text))}  # first of each language
    assert min(starts.values()) < 60
    assert starts["python"] < 60 and starts["toml"] < 60, starts


def test_readme_links_point_at_files():
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text()):
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), f"README links to a missing {target}"


def test_readme_sweep_example_is_valid(tmp_path):
    from bench.grid import load_config

    path = tmp_path / "sweep.toml"
    path.write_text(_readme_block("toml"))
    cells = load_config(path)
    assert len(cells) == 5 and {c.policy for c in cells} == {"uem", "full"}


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys, one_thread):
    """The example as written, on a micro model trained for a few steps into a temporary cache
    (the shipped extractor and reference features are read as usual), with a smaller
    calibration batch and fewer timing repeats so it takes seconds."""
    import bench.cache
    import bench.pipeline
    import bench.run
    import bench.train

    monkeypatch.setattr(bench.cache, "DEFAULT_CACHE_DIR", tmp_path / "cache")
    monkeypatch.setitem(bench.train.BUDGETS, "micro", bench.train.Budget(4, 2, 2))
    monkeypatch.setattr(bench.pipeline, "CALIBRATION_SAMPLES", 16)
    monkeypatch.setattr(bench.run, "WALL_REPEATS", 2)
    monkeypatch.setattr(bench.run, "UNSTABLE_SPREAD", math.inf)  # no re-measuring on a busy
    monkeypatch.setattr(bench.run, "BUSY_CORES", math.inf)  # test machine
    exec(compile(_readme_block("python"), "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert re.search(r"micro uem uem@0\.65 dpm-solver\+\+-10: FID [\d.]+, FLOP ratio 0\.\d\d", out)
    assert (tmp_path / "cache" / "checkpoint").is_dir()  # nothing written to the real cache


@pytest.fixture
def registries():
    """Every registry an example may add to, restored afterwards (registration is global)."""
    import adaptive.recipes
    import bench.cell
    import bench.train
    import caching.registry
    import models
    import pruning
    import samplers
    from adaptive.policies import POLICIES

    dicts = [
        POLICIES,
        caching.registry.CACHES,
        caching.registry.CACHE_OPTIONS,
        samplers.SAMPLERS,
        samplers.ORDERS,
        pruning.IMPORTANCES,
        models.MODELS,
        bench.train.BUDGETS,
        adaptive.recipes.RECIPES,
    ]
    saved = [dict(d) for d in dicts]
    yield
    for d, before in zip(dicts, saved, strict=True):
        d.clear()
        d.update(before)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_extension_example_runs(path, registries, capsys, one_thread):
    runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    assert "cell:" in out, out  # each example ends by naming its component in a cell


def test_every_extension_kind_has_an_example():
    stems = {p.stem for p in EXAMPLES}
    assert {"exit_policy", "cache_policy", "sampler", "pruning_importance", "model"} <= stems
    page = (ROOT / "docs" / "extending.md").read_text()
    for stem in stems:
        assert f'--8<-- "docs/examples/{stem}.py"' in page, f"{stem}.py is not on extending.md"


def _gen_reference():
    spec = importlib.util.spec_from_file_location(
        "gen_reference", ROOT / "docs" / "gen_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass resolves annotations through it
    spec.loader.exec_module(module)
    return module


def test_reference_pages_are_up_to_date():
    gen = _gen_reference()
    for name, render in gen.PAGES.items():
        path = gen.OUT / name
        assert path.read_text() == render(), (
            f"docs/reference/{name} is out of date: run python docs/gen_reference.py"
        )


def test_findings_pages_state_their_provenance():
    for page in (ROOT / "docs" / "findings").glob("*.md"):
        if page.name != "index.md":
            assert "> **Provenance.**" in page.read_text(), page.name


def test_site_builds_without_warnings(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install mkdocs)")
    pytest.importorskip("material", reason="mkdocs-material is not installed")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
    assert (tmp_path / "concepts" / "index.html").exists()


def _readme_commands() -> list[list[str]]:
    """The ``python -m MODULE ARGS`` commands of the README's bash blocks (comments dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    found = []
    for line in "\n".join(blocks).splitlines():
        for part in line.split("#")[0].split("&&"):
            m = re.search(r"python -m ([\w.]+)(.*)", part)
            if m and m.group(1) != "pytest":  # the test command is this suite itself
                found.append([m.group(1), *m.group(2).split()])
    return found


def test_readme_commands_run_in_their_dry_forms(one_thread):
    """Each README command, in a form that checks it without the long work: the sweep with
    --dry-run (its cells are validated), every other command's --help."""
    commands = _readme_commands()
    assert {c[0] for c in commands} >= {"bench.grid", "bench.report"}
    for module, *args in commands:
        extra = ["--dry-run"] if module == "bench.grid" else ["--help"]
        res = subprocess.run(
            [sys.executable, "-m", module, *args, *extra],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert res.returncode == 0, (module, res.stderr[-2000:])
