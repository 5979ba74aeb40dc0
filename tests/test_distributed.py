"""Executors of the grid: failures recorded, local processes, a real Dask LocalCluster (with a
worker killed mid-sweep), and concurrent builders of one artifact."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
import torch

from bench import grid
from bench.cache import ArtifactCache
from bench.executors import RunOptions
from bench.grid import load_config, main
from bench.store import load_records, pending

SWEEP = """
[sweep]
model = "micro"
sampler = ["ddim", "dpm-solver++"]
steps = 3
samples = 40
seed = [0, 1]
"""


def _cfg(tmp_path, body=SWEEP):
    path = tmp_path / "sweep.toml"
    path.write_text(body)
    return path


def _args(tmp_path, out, cache_dir, body=SWEEP):
    return ["--config", str(_cfg(tmp_path, body)), "--out", str(out), "--cache-dir", str(cache_dir)]


def _by_key(out):
    return {r["key"]: r for r in load_records(out)}


def _same_records(a, b):
    assert a.keys() == b.keys() and a
    for k in a:
        assert a[k]["nfe"] == b[k]["nfe"]
        assert a[k]["flop_ratio_per_call"] == pytest.approx(b[k]["flop_ratio_per_call"], abs=1e-6)
        assert a[k]["fid"] == pytest.approx(b[k]["fid"], rel=1e-3)  # threads differ


@pytest.fixture(scope="module")
def inprocess(tmp_path_factory, shared_cache_dir):
    root = tmp_path_factory.mktemp("inprocess")
    out = root / "out"
    args = ["--config", str(_cfg(root)), "--out", str(out), "--cache-dir", str(shared_cache_dir)]
    assert main(args) == 0
    return _by_key(out)


def test_failed_cell_is_recorded_and_the_rest_continue(
    tmp_path, shared_cache_dir, capsys, monkeypatch
):
    # The preflight refuses a sweep whose data is missing; here the data goes missing after it
    # (a cell that fails at run time), so the failure must be recorded and the others run.
    monkeypatch.setattr(grid, "check_sweep", lambda cells, data, local=True: None)
    body = SWEEP + '\n[[cell]]\ndataset = "cifar10"\nmodel = "micro"\nsamples = 8\n'
    out = tmp_path / "out"
    args = ["--config", str(_cfg(tmp_path, body)), "--out", str(out)]
    args += ["--cache-dir", str(shared_cache_dir)]
    assert main(args) == 1
    assert len(load_records(out)) == 4
    (failed,) = load_records(out, "failed")
    assert failed["dataset"] == "cifar10" and "data-root" in failed["error"]
    assert "Failed cells (1" in (out / "summary.md").read_text()
    assert "1 cell(s) failed" in capsys.readouterr().out
    cells = load_config(_cfg(tmp_path, body))
    assert [c.dataset for c in pending(cells, out)] == ["cifar10"]  # a rerun retries it


def test_local_processes_give_the_same_records(tmp_path, shared_cache_dir, inprocess):
    out = tmp_path / "out"
    args = _args(tmp_path, out, shared_cache_dir)
    assert main([*args, "--executor", "local", "--workers", "2"]) == 0
    _same_records(_by_key(out), inprocess)


def test_dask_cluster_gives_the_same_records_even_when_a_worker_dies(
    tmp_path, shared_cache_dir, inprocess
):
    dask = pytest.importorskip("dask")
    from dask.distributed import Client, LocalCluster

    from bench.distributed import run_dask

    cells = load_config(_cfg(tmp_path))
    out = tmp_path / "out"
    with dask.config.set({"distributed.scheduler.allowed-failures": 3}):
        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        )
    client = Client(cluster)
    killed = []

    def kill_a_busy_worker():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            busy = [w for w, tasks in client.processing().items() if tasks]
            if busy:
                pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_busy_worker, daemon=True)
    try:
        killer.start()
        opts = RunOptions(cache_dir=str(shared_cache_dir))
        status = run_dask(cells, out, opts, client=client, threads=1)
        killer.join()
    finally:
        client.close()
        cluster.close()
    assert killed, "no worker was killed: the test did not test anything"
    assert set(status.values()) == {"done"} and len(status) == len(cells)
    _same_records(_by_key(out), inprocess)
    assert not (out / "failed").exists() or not list((out / "failed").iterdir())


def test_concurrent_builders_of_one_artifact_build_it_once(tmp_path):
    cache = ArtifactCache(tmp_path, shipped=())
    built, results = [], []

    def build():
        built.append(1)
        time.sleep(0.3)
        return {"w": torch.arange(4.0)}, {"n": len(built)}

    threads = [
        threading.Thread(target=lambda: results.append(cache.get_or_build("k", "x", build)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1
    assert sorted(r[2] for r in results) == [False, True, True]
    assert all(torch.equal(r[0]["w"], torch.arange(4.0)) for r in results)
    assert json.loads(json.dumps(results[0][1])) == {"n": 1}


def test_grid_cli_starts_its_own_local_dask_cluster(tmp_path, shared_cache_dir, inprocess):
    pytest.importorskip("dask.distributed")
    out = tmp_path / "out"
    args = _args(tmp_path, out, shared_cache_dir)
    assert main([*args, "--executor", "dask", "--workers", "2"]) == 0
    _same_records(_by_key(out), inprocess)
    assert (out / "table.parquet").exists()


def test_scheduler_needs_the_dask_executor(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--config", str(_cfg(tmp_path)), "--scheduler", "tcp://x:1"])
    assert e.value.code == 2 and "--scheduler needs --executor dask" in capsys.readouterr().err
