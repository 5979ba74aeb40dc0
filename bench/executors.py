"""Where a sweep's cells run: one registry of executors with one signature.

Every executor takes the cells still to run, the output folder and :class:`RunOptions`, calls
:func:`bench.run.run_and_store` once per cell (in this process, in local worker processes or on
Dask workers) and returns ``{cell key: status}`` with the statuses ``run_and_store`` reports.
Records reach the store only through ``run_and_store``, so every executor gets the same
guarantees: atomic records, claims, failures recorded, resumable.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bench.cache import ArtifactCache
from bench.cell import Cell
from bench.plugins import with_plugins
from bench.progress import SweepProgress
from bench.run import run_and_store, threads_per_worker
from bench.runoptions import RunOptions

__all__ = ["EXECUTORS", "RunOptions", "run_inprocess", "run_local"]


def run_inprocess(cells: list[Cell], out: Path, opts: RunOptions) -> dict[str, str]:
    """One cell after the other in this process, under one bar naming the cell and its phase
    (:class:`bench.progress.SweepProgress`)."""
    status = {}
    with SweepProgress(cells, ArtifactCache(opts.cache_dir)).open() as bar:
        for c in cells:
            bar.start(c)
            status[c.key] = run_and_store(c, out, opts.cache_dir, data=opts.data, phase=bar.phase)[
                0
            ]
            bar.done(c)
    return status


def run_local(cells: list[Cell], out: Path, opts: RunOptions) -> dict[str, str]:
    """Each cell in one of ``opts.workers`` fresh processes (spawned: forking after torch has
    started its thread pools can deadlock); CPU threads are split between them."""
    import concurrent.futures as cf
    import multiprocessing as mp

    threads = threads_per_worker(opts.workers)
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(opts.workers, mp_context=ctx) as pool:
        args = (out, opts.cache_dir, threads, opts.data)
        futures = {
            pool.submit(with_plugins, opts.plugins, run_and_store, c, *args): c for c in cells
        }
        status = {}
        # Phases happen in other processes; the bar names the cells as they finish.
        with SweepProgress(cells, ArtifactCache(opts.cache_dir)).open() as bar:
            for fut in cf.as_completed(futures):
                bar.start(futures[fut])
                status[futures[fut].key] = fut.result()[0]
                bar.done(futures[fut])
    return status


def _run_dask(cells: list[Cell], out: Path, opts: RunOptions) -> dict[str, str]:
    from bench.distributed import run_dask  # dask is an optional dependency

    return run_dask(cells, out, opts)


EXECUTORS: dict[str, Callable[[list[Cell], Path, RunOptions], dict[str, str]]] = {
    "inprocess": run_inprocess,
    "local": run_local,
    "dask": _run_dask,
}
