"""What every executor takes besides the cells (:mod:`bench.executors`, :mod:`bench.distributed`).

A module of its own so that the Dask executor, which lives apart because dask is optional, and
the executor registry can both name it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass

from bench.data import DataSource

__all__ = ["RunOptions"]


@dataclass(frozen=True)
class RunOptions:
    """What every executor needs besides the cells: the artifact cache, the data source, and
    the worker settings (``workers`` processes; Dask's ``scheduler`` address and ``retries``),
    and the ``plugins`` every worker process imports before it runs a cell
    (:mod:`bench.plugins`)."""

    cache_dir: str | None = None
    data: DataSource | None = None
    workers: int = 2
    scheduler: str | None = None
    retries: int = 2
    plugins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
