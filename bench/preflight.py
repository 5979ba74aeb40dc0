"""What a sweep needs before any cell runs, checked before any work (issue 36).

A sweep that cannot run should say so in one line and exit with code 2 before the first cell
trains or samples, not record every cell as failed minutes later. :func:`check_sweep` checks
what the cells use: their devices, text encoders (the ``[text]`` extra), every data set (loaded
once: embedded data needs its package, torchvision data needs ``--data-root`` or
``--download``) and the InceptionV3 weights of ``extractor = "inception"`` cells.
:func:`check_dask` reaches the scheduler a ``--scheduler`` names. Folders the command writes are
checked by every command's parser (:func:`bench.cache.preflight`).
"""

from __future__ import annotations

import importlib.util

from bench.cell import Cell
from bench.data import DataSource
from bench.devices import resolve_device
from bench.metrics import inception_weights
from bench.text import check_available

__all__ = ["DASK_TIMEOUT_S", "check_dask", "check_sweep"]

# How long to wait for a named Dask scheduler before refusing the sweep.
DASK_TIMEOUT_S = 10


def check_sweep(cells: list[Cell], data: DataSource, local: bool = True) -> None:
    """Raise one ``ValueError`` (``DatasetError`` included) naming the first thing ``cells``
    need that this machine lacks; return quietly when everything is there. ``local=False``
    (cells run on a remote Dask cluster's workers, which may hold data and weights this machine
    does not) checks only the cells' devices and text extras."""
    for device in sorted({c.device for c in cells}):
        resolve_device(device)  # e.g. cuda cells on a machine without CUDA
    for text in sorted({c.text for c in cells if c.text is not None}):
        check_available(text)  # a missing [text] extra
    if not local:
        return
    for dataset in sorted({c.dataset for c in cells}):
        data.load(dataset)  # a missing --data-root, package or file
    if any(c.extractor == "inception" for c in cells):
        inception_weights()


def check_dask(scheduler: str | None) -> None:
    """Refuse ``--executor dask`` without dask.distributed, and a ``scheduler`` that does not
    answer within :data:`DASK_TIMEOUT_S` seconds, with one ``ValueError`` each."""
    if importlib.util.find_spec("distributed") is None:
        raise ValueError("--executor dask needs dask.distributed: pip install 'diffcompress[dask]'")
    if scheduler is None:
        return
    from dask.distributed import Client

    try:
        client = Client(scheduler, timeout=DASK_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError) as e:
        raise ValueError(
            f"cannot reach the Dask scheduler at {scheduler} within {DASK_TIMEOUT_S} s "
            f"({type(e).__name__}: {e}); start one (dask scheduler) or drop --scheduler to run "
            "a LocalCluster"
        ) from e
    client.close()
