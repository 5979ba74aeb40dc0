"""Run grid cells on a Dask distributed cluster (``python -m bench.grid --executor dask``).

Each unfinished cell is one task calling :func:`bench.run.run_and_store`, so workers write
records through the same atomic, key-named store as the in-process run: a record exists once,
only when its cell finished. Workers must see ``out`` and the artifact cache on a shared path;
cells that need the same trained or pruned model serialise on the cache's lock file, so the
model is built once and reused.

Failures: a cell that raises is recorded under ``out/failed`` by the worker (the sweep goes
on). A worker that *dies* mid-cell (killed, out of memory) loses its task; the scheduler
reruns it on another worker up to ``retries`` times (Dask's ``allowed-failures``), after which
the cell is recorded as failed here.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tqdm.auto import tqdm

from bench.cell import Cell
from bench.plugins import with_plugins
from bench.run import run_and_store, threads_per_worker
from bench.runoptions import RunOptions
from bench.store import write_failure

__all__ = ["run_dask"]

log = logging.getLogger(__name__)


def _client(scheduler: str | None, workers: int, threads: int):
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as e:  # an optional dependency
        raise SystemExit(
            "--executor dask needs dask.distributed: pip install 'diffcompress[dask]'"
        ) from e
    if scheduler is not None:
        return Client(scheduler), None
    # One single-threaded Dask worker per process; torch gets the process's share of the cores.
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        env={"OMP_NUM_THREADS": str(threads)},
    )
    return Client(cluster), cluster


def run_dask(
    cells: list[Cell],
    out: str | Path,
    opts: RunOptions | None = None,
    *,
    threads: int | None = None,
    progress: bool = True,
    client=None,
) -> dict[str, str]:
    """Run ``cells`` on the cluster at ``opts.scheduler`` (or a fresh ``LocalCluster`` of
    ``opts.workers`` processes, or an existing ``client``, left open), with ``opts``'s artifact
    cache and data source (default :class:`bench.executors.RunOptions`); returns {cell key:
    "done" | "failed"}. ``opts.retries`` applies to clusters this function starts; a running
    scheduler uses its own ``distributed.scheduler.allowed-failures``."""
    import dask

    opts = RunOptions() if opts is None else opts
    out = Path(out)
    threads = threads or threads_per_worker(opts.workers)
    with dask.config.set({"distributed.scheduler.allowed-failures": opts.retries}):
        own = client is None
        cluster = None
        if own:
            client, cluster = _client(opts.scheduler, opts.workers, threads)
        try:
            return _run_on(client, cells, out, opts, threads, progress)
        finally:
            if own:
                client.close()
            if cluster is not None:
                cluster.close()


def _run_on(
    client, cells: list[Cell], out: Path, opts: RunOptions, threads: int, progress: bool
) -> dict[str, str]:
    """Submit one :func:`bench.run.run_and_store` task per cell to ``client`` (``threads``
    torch threads each) and collect the statuses as the tasks finish; a task whose result
    cannot be had (its worker died ``retries`` times, the scheduler was lost) is recorded as
    failed under ``out/failed``."""
    from dask.distributed import as_completed

    futures = {
        client.submit(
            with_plugins,  # a Dask worker is a fresh process: it loads the plugins first
            opts.plugins,
            run_and_store,
            cell,
            str(out),
            opts.cache_dir,
            threads,
            opts.data,
            key=f"cell-{cell.key}",
            pure=False,
        ): cell
        for cell in cells
    }
    status: dict[str, str] = {}
    bar = tqdm(total=len(futures), desc="cells", disable=not progress)
    for fut in as_completed(futures):
        cell = futures[fut]
        try:
            state, _ = fut.result()
        except Exception as e:  # KilledWorker after `retries` deaths, lost scheduler
            write_failure(out, cell, f"{type(e).__name__}: {e}")
            state = "failed"
        status[cell.key] = state
        bar.update()
    bar.close()
    return status
