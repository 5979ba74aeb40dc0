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
from bench.data import DataSource
from bench.run import run_and_store, threads_per_worker
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
    cache_dir: str | None = None,
    *,
    scheduler: str | None = None,
    workers: int = 2,
    retries: int = 2,
    threads: int | None = None,
    progress: bool = True,
    client=None,
    data: DataSource | None = None,
) -> dict[str, str]:
    """Run ``cells`` on the cluster at ``scheduler`` (or a fresh ``LocalCluster`` of
    ``workers`` processes, or an existing ``client``, left open); returns {cell key: "done" |
    "failed"}. ``retries`` applies to clusters this function starts; a running scheduler
    uses its own ``distributed.scheduler.allowed-failures``."""
    import dask

    out = Path(out)
    threads = threads or threads_per_worker(workers)
    status: dict[str, str] = {}
    with dask.config.set({"distributed.scheduler.allowed-failures": retries}):
        own = client is None
        cluster = None
        if own:
            client, cluster = _client(scheduler, workers, threads)
        try:
            from dask.distributed import as_completed

            futures = {
                client.submit(
                    run_and_store,
                    cell,
                    str(out),
                    cache_dir,
                    threads,
                    data,
                    key=f"cell-{cell.key}",
                    pure=False,
                ): cell
                for cell in cells
            }
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
        finally:
            if own:
                client.close()
            if cluster is not None:
                cluster.close()
    return status
