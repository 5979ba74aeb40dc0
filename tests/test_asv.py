"""asv records a result per commit with the project's `existing` environment only when given the
commit hash (``--set-commit-hash``); without it a run saves nothing. This runs a tiny benchmark
through the project's own asv configuration into a temporary results folder."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ASV = Path(sys.executable).with_name("asv")


@pytest.mark.skipif(not ASV.exists(), reason="asv is installed with the test extra")
def test_asv_run_with_the_commit_hash_saves_a_result(tmp_path):
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    if not commit:
        pytest.skip("not a git checkout")
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "__init__.py").write_text("")
    (tmp_path / "bench" / "bench_tiny.py").write_text(
        "class Tiny:\n    def time_sum(self):\n        sum(range(100))\n\n"
        "    def track_three(self):\n        return 3.0\n"
    )
    text = re.sub(r"^\s*//.*$", "", (ROOT / "asv.conf.json").read_text(), flags=re.M)
    cfg = json.loads(text)  # the project's config, pointed at the tiny suite and tmp folders
    cfg.update(
        repo=str(ROOT),
        benchmark_dir=str(tmp_path / "bench"),
        results_dir=str(tmp_path / "results"),
        html_dir=str(tmp_path / "html"),
        env_dir=str(tmp_path / "env"),
    )
    (tmp_path / "asv.conf.json").write_text(json.dumps(cfg))
    env = {**os.environ, "HOME": str(tmp_path)}  # asv machine writes ~/.asv-machine.json
    conf = ["--config", str(tmp_path / "asv.conf.json")]

    def asv(*args):
        out = subprocess.run(
            [str(ASV), *args, *conf], env=env, capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, out.stdout + out.stderr

    asv("machine", "--yes", "--machine", "ci")
    asv("run", "--quick", "--python=same", "--machine", "ci")
    assert not list((tmp_path / "results" / "ci").glob(f"{commit[:8]}-*.json"))  # the pitfall
    asv("run", "--quick", "--python=same", "--machine", "ci", "--set-commit-hash", commit)
    (result,) = (tmp_path / "results" / "ci").glob(f"{commit[:8]}-*.json")
    saved = json.loads(result.read_text())
    assert saved["commit_hash"] == commit and len(saved["results"]) == 2
    asv("publish")
    index = json.loads((tmp_path / "html" / "index.json").read_text())
    assert commit[:8] in "".join(index["revision_to_hash"].values())
