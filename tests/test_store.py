"""The results store never loses a result and never runs a cell twice (issue 17)."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench import run as runner
from bench import store
from bench.cell import Cell, cell_model_key
from bench.grid import main

ROOT = Path(__file__).resolve().parents[1]
CELLS = [Cell(model="micro", steps=s, samples=8) for s in (1, 2, 3, 4, 5, 6)]


def fake_record(cell: Cell) -> dict:
    """What run_cell returns, minus the work (the store only needs the record's shape)."""
    return {
        **dataclasses.asdict(cell),
        "key": cell.key,
        "model_key": cell_model_key(cell),
        "label": cell.label(),
        "fid": float(cell.steps),
        "kid": 0.0,
        "extractor": f"{cell.extractor}-{cell.dataset}-fake",  # resolved, as run_cell writes
        "nonfinite": False,
        "nfe": cell.steps,
        "flop_ratio_per_call": 1.0,
        "flop_ratio_vs_reference": cell.steps / 1000,
        "layer_ratio": 1.0,
        "seconds_per_image": 0.0,
    }


def _sweep(tmp_path: Path, cells: list[Cell]) -> Path:
    body = "".join(
        f'[[cell]]\nmodel = "micro"\nsteps = {c.steps}\nsamples = {c.samples}\n' for c in cells
    )
    path = tmp_path / "sweep.toml"
    path.write_text(body)
    return path


def _run(tmp_path, monkeypatch, cells, calls=None):
    def run_cell(cell, cache, device=None, sample_grid=None, data=None, phase=None):
        if calls is not None:
            calls.append(cell.key)
        return fake_record(cell)

    monkeypatch.setattr(runner, "run_cell", run_cell)
    out = tmp_path / "out"
    args = ["--config", str(_sweep(tmp_path, cells)), "--out", str(out)]
    return main([*args, "--cache-dir", str(tmp_path / "cache")]), out


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],  # truncated by a crash or a full disk
        lambda text: "",  # empty
        lambda text: json.dumps({**json.loads(text), "steps": 99}),  # not this cell's record
        lambda text: json.dumps({**json.loads(text), "key": "0" * 16}),
        lambda text: json.dumps([1, 2, 3]),
    ],
)
def test_a_bad_record_is_moved_aside_and_its_cell_rerun(tmp_path, monkeypatch, damage):
    calls: list[str] = []
    rc, out = _run(tmp_path, monkeypatch, CELLS[:2], calls)
    assert rc == 0 and len(calls) == 2
    path = store.record_path(out, CELLS[0])
    path.write_text(damage(path.read_text()))
    assert [c.key for c in store.pending(CELLS[:2], out, move_bad=False)] == [CELLS[0].key]
    assert path.exists()  # a dry look moves nothing
    rc, _ = _run(tmp_path, monkeypatch, CELLS[:2], calls)
    assert rc == 0 and calls[2:] == [CELLS[0].key]  # only the damaged cell ran again
    assert json.loads(path.read_text())["key"] == CELLS[0].key
    (kept,) = (out / "corrupt").iterdir()  # the bad file is kept for inspection
    assert kept.name.startswith(CELLS[0].key)
    table = (out / "summary.md").read_text()
    assert all(c.label() in table for c in CELLS[:2])


@pytest.mark.parametrize("model_key", ["0123456789abcdef", None])
def test_a_record_of_another_model_is_superseded_and_its_cell_rerun(
    tmp_path, monkeypatch, caplog, model_key
):
    """A record made with a model the cell no longer runs (its checkpoint retrained, or a record
    from before records named their model) is moved to superseded/, not mixed into tables."""
    calls: list[str] = []
    rc, out = _run(tmp_path, monkeypatch, CELLS[:2], calls)
    path = store.record_path(out, CELLS[0])
    rec = json.loads(path.read_text())
    if model_key is None:
        del rec["model_key"]
    else:
        rec["model_key"] = model_key
    path.write_text(json.dumps(rec))
    with caplog.at_level("WARNING"):
        rc, _ = _run(tmp_path, monkeypatch, CELLS[:2], calls)
    assert rc == 0 and calls[2:] == [CELLS[0].key]
    assert json.loads(path.read_text())["model_key"] == cell_model_key(CELLS[0])
    (kept,) = (out / "superseded").iterdir()
    assert kept.name.startswith(CELLS[0].key) and not (out / "corrupt").exists()
    assert f"the cell's model is now {cell_model_key(CELLS[0])}" in caplog.text


def test_a_record_that_cannot_be_saved_is_reported_with_its_content(tmp_path, monkeypatch, caplog):
    real = store.atomic_write_bytes

    def full_disk(path, data):
        if path.parent.name == "records":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(store, "atomic_write_bytes", full_disk)
    with caplog.at_level("ERROR"):
        rc, out = _run(tmp_path, monkeypatch, CELLS[:1])
    assert rc == 1 and not store.record_path(out, CELLS[0]).exists()
    assert "No space left on device" in caplog.text and '"fid": 1.0' in caplog.text


def test_concurrent_sweeps_split_the_cells_and_run_each_once(tmp_path):
    """Two real processes on one --out: every cell runs exactly once, across both."""
    log = tmp_path / "calls.log"
    driver = tmp_path / "driver.py"
    driver.write_text(
        textwrap.dedent(
            f"""
            import os, sys, time
            sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
            from bench import grid, run
            from test_store import fake_record

            def run_cell(cell, cache, device=None, sample_grid=None, data=None, phase=None):
                with open({str(log)!r}, "a") as f:
                    f.write(f"{{os.getpid()}} {{cell.key}}\\n")
                time.sleep(0.4)
                return fake_record(cell)

            run.run_cell = run_cell
            sys.exit(grid.main(sys.argv[1:]))
            """
        )
    )
    sweep = _sweep(tmp_path, CELLS)
    args = ["--config", str(sweep), "--out", str(tmp_path / "out")]
    args += ["--cache-dir", str(tmp_path / "cache")]
    procs = [
        subprocess.Popen([sys.executable, str(driver), *args], cwd=ROOT, stdout=subprocess.PIPE)
        for _ in range(2)
    ]
    for p in procs:
        p.communicate(timeout=120)
    keys = [line.split()[1] for line in log.read_text().splitlines()]
    assert sorted(keys) == sorted(c.key for c in CELLS)  # each once
    assert len({line.split()[0] for line in log.read_text().splitlines()}) == 2  # both worked
    assert store.pending(CELLS, tmp_path / "out") == []
    assert list((tmp_path / "out" / "claims").iterdir()) == []  # claims removed when done


def test_a_claim_held_by_a_killed_process_is_free_again(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                sys.path.insert(0, {str(ROOT)!r})
                from pathlib import Path
                from bench.cell import Cell
                from bench.store import claim
                with claim(Path({str(out)!r}), Cell(model="micro", steps=1, samples=8)) as mine:
                    print(mine, flush=True)
                    time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "True"
    with store.claim(out, CELLS[0]) as mine:
        assert not mine  # held by the live process
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    deadline = time.time() + 5
    while True:
        with store.claim(out, CELLS[0]) as mine:
            if mine or time.time() > deadline:
                break
    assert mine


@pytest.mark.parametrize(
    ("err", "text"),
    [
        (errno.ENOSPC, "No space left on device"),
        (errno.EROFS, "Read-only file system"),
    ],
)
def test_preflight_turns_a_full_or_read_only_disk_into_one_line(
    tmp_path, monkeypatch, capsys, err, text
):
    def refuse(fd, data):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(store.os, "write", refuse)
    monkeypatch.setattr(runner, "run_cell", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(SystemExit) as e:
        main(["--config", str(_sweep(tmp_path, CELLS[:1])), "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    err_text = capsys.readouterr().err
    assert f"cannot write to {tmp_path / 'out'}: {text}" in err_text


def test_an_output_folder_that_cannot_exist_fails_before_any_work(tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(runner, "run_cell", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(SystemExit) as e:
        args = ["--config", str(_sweep(tmp_path, CELLS[:1])), "--out"]
        main([*args, str(tmp_path / "file" / "out")])
    assert e.value.code == 2 and "cannot write to" in capsys.readouterr().err


def test_a_record_rebuilds_its_cell_even_unscored():
    cell = Cell(model="micro", steps=2, samples=8)
    rec = fake_record(cell)
    assert store.cell_of(rec) == cell  # "cnn-digits-fake" back to "cnn"
    assert store.cell_of({**rec, "extractor": None, "nonfinite": True}) == cell
    with pytest.raises(ValueError, match="does not rebuild its cell"):
        store.cell_of({**rec, "steps": 3})


def test_summary_lists_cells_whose_timing_is_not_trusted(tmp_path):
    recs = [
        {**fake_record(c), "timing_unstable": i == 1, "wall_ratio_per_call": 1.0}
        for i, c in enumerate(CELLS[:3])
    ]
    store.write_tables(tmp_path, recs)
    summary = (tmp_path / "summary.md").read_text()
    assert "## Timing unstable (1; wall-clock not trusted)" in summary
    assert f"- {CELLS[1].label()} ({CELLS[1].key})" in summary
    assert "| timing_unstable |" in summary


def test_budget_table_lists_each_best_cell_once_and_states_the_kid_scale(tmp_path):
    # CELLS[0] (1 step, FID 1.0) is the best at every budget: one row, not six.
    store.write_tables(tmp_path, [fake_record(c) for c in CELLS[:3]])
    summary = (tmp_path / "summary.md").read_text()
    best = summary.split("## Best FID")[1]
    assert best.count(CELLS[0].label()) == 1
    assert store.KID_NOTE in summary and "| seed |" in summary


def test_other_load_counts_other_processes_cpu_not_ours(monkeypatch):
    from bench import measure

    busy = iter([100.0, 103.0])  # the machine ran 3 CPU seconds meanwhile ...
    own = iter([10.0, 11.0])  # ... of which this process ran 1
    clock = iter([0.0, 2.0])  # over 2 s of wall-clock: others kept 1 core busy
    monkeypatch.setattr(measure, "_machine_busy_seconds", lambda: next(busy))
    monkeypatch.setattr(measure, "_own_seconds", lambda: next(own))
    monkeypatch.setattr(measure.time, "perf_counter", lambda: next(clock))
    with measure.OtherLoad() as load:
        pass
    assert load.cores == pytest.approx(1.0)
    monkeypatch.undo()
    monkeypatch.setattr(measure, "_machine_busy_seconds", lambda: None)  # not Linux
    with measure.OtherLoad() as load:
        pass
    assert load.cores is None


def test_budget_table_counts_the_cells_within_noise_of_the_best(tmp_path):
    """The best FID of a budget is a finding only over cells outside its noise: FID 1 +- 0.5
    and FID 2 +- 0.5 tie (gap 1 < 1.96 x 0.71), FID 6 does not."""
    recs = [fake_record(c) for c in CELLS[:3]]  # FIDs 1, 2, 3 (steps)
    for r, fid, sd in zip(recs, (1.0, 2.0, 6.0), (0.5, 0.5, 0.5), strict=True):
        r.update(fid=fid, fid_boot_sd=sd)
    store.write_tables(tmp_path, recs)
    summary = (tmp_path / "summary.md").read_text()
    row = next(ln for ln in summary.split("## Best FID")[1].splitlines() if CELLS[0].label() in ln)
    assert row.endswith("| 1 |") and "1.000 +- 0.98" in row
    assert "| fid_boot_sd |" in summary
