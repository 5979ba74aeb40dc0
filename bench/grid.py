"""Sweep pipeline cells: training recipe x pruning x exit policy x sampler x steps x guidance.

``python -m bench.grid`` runs the default digits sweep (49 cells; the trained models ship with
the project, anything else is trained on first use and cached); ``--quick`` a tiny smoke sweep;
``--config FILE.toml`` any sweep (``[[cell]]`` tables and/or a ``[sweep]`` of axes; examples in
bench/sweeps/); ``--list`` prints every axis and choice; ``--dry-run`` the cells and which are
done. Then ``python -m bench.report`` draws the figures.

Each finished cell is written atomically as ``<out>/records/<cell key>.json``, so an interrupted
sweep (even ``kill -9``) redoes only unfinished cells; a cell that raises is written to
``<out>/failed/`` with its error, the others go on, and the next run retries it. The records are
gathered into ``table.csv``, ``table.parquet`` and ``summary.md`` (best FID per FLOP budget).
What a record holds: :mod:`bench.run`. Where cells run (``--executor``): :mod:`bench.executors`.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import itertools
import logging
import math
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from adaptive.policies import POLICIES
from bench.cell import CELL_CHOICES, Cell
from bench.cli import at_least, make_parser
from bench.data import DataSource
from bench.devices import resolve_device
from bench.executors import EXECUTORS, RunOptions
from bench.preflight import check_dask, check_sweep
from bench.store import load_records, os_error_line, pending, read_record, write_tables
from bench.text import TEXT_ENCODERS
from caching import CACHES
from models import MODELS
from samplers import ENDS, SAMPLERS, SPACINGS, describe

__all__ = ["default_cells", "load_config", "main", "quick_cells"]

log = logging.getLogger(__name__)


DEFAULT_SWEEP = Path(__file__).resolve().parent / "sweeps" / "default.toml"


# Cell fields whose value is a TOML table (bench.cell.Cell.policy_args / cache_args).
TABLE_FIELDS = ("policy_args", "cache_args")


def default_cells(samples: int = 1000, device: str = "cpu") -> list[Cell]:
    """The default digits sweep, ``bench/sweeps/default.toml`` (49 cells: every exit policy at
    FLOP ratio 0.65 and the reference x three samplers, the step axis, 30% pruning, every
    recipe at full depth, the headline cells at three seeds; the file says which), with
    ``samples`` and ``device`` set on every cell."""
    cells = load_config(DEFAULT_SWEEP, device=device)
    return [dataclasses.replace(c, samples=samples) for c in cells]


# The most cells a sweep file may expand to unless --max-cells raises it: a typo in an axis
# (a list of 1,000 seeds) should be a question, not a week of CPU.
MAX_CELLS = 10_000


def quick_cells(device: str = "cpu") -> list[Cell]:
    """A smoke sweep: the `micro` model, few steps and samples."""
    return [
        Cell(
            model="micro",
            recipe=r,
            policy=p,
            target_flop_ratio=tf,
            sampler=s,
            steps=4,
            samples=64,
            device=device,
        )
        for r, p, tf in [("full", "full", None), ("uem", "uem", 0.7)]
        for s in ("ddim", "dpm-solver++")
    ]


def load_config(path: Path, device: str | None = None, max_cells: int = MAX_CELLS) -> list[Cell]:
    """Cells from a TOML file: ``[[cell]]`` tables, and/or ``[sweep]`` (or several
    ``[[sweep]]``) tables with a value or a list of values per axis, each expanded to its
    cartesian product. ``device``, if given, overrides every cell's device. A file that expands
    to more than ``max_cells`` cells is refused before any cell is built.

    Everything is checked before any cell runs: the file's shape (only ``cell`` and ``sweep``
    at the top, tables where tables belong, scalars as axis values), unknown fields, and each
    cell's values (:class:`Cell`). A failure is one ``ValueError`` naming the file, the table
    and the field."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # a BOM is not TOML
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"cannot read config {path}: {e}") from e
    extra = set(data) - {"cell", "sweep"}
    if extra:
        raise ValueError(f"{path}: unknown section(s) {sorted(extra)}; valid: cell, sweep")
    override = {"device": device} if device else {}

    def make(where: str, values: dict[str, Any]) -> Cell:
        try:
            return Cell(**(values | override))
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: {where}: {e}") from e

    cells = []
    for i, table in enumerate(_tables(path, data, "cell"), 1):
        _check_fields(path, f"[[cell]] #{i}", "cell field(s)", table)
        cells.append(make(f"[[cell]] #{i}", table))
    sweeps = [
        _expand(path, f"sweep #{i}", t) for i, t in enumerate(_tables(path, data, "sweep"), 1)
    ]
    size = len(_tables(path, data, "cell")) + sum(len(combos) for combos in sweeps)
    if size > max_cells:
        raise ValueError(
            f"{path} expands to {size:,} cells, more than the limit of {max_cells:,}; "
            "narrow its axes or pass --max-cells to run it"
        )
    for i, combos in enumerate(sweeps, 1):
        for combo in combos:
            cells.append(make(f"sweep #{i}", combo))
    if not cells:
        raise ValueError(f"{path} defines no [[cell]] tables and no [sweep] / [[sweep]]")
    return cells


_FIELDS = {f.name for f in dataclasses.fields(Cell)}


def _tables(path: Path, data: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The ``[[cell]]`` (or ``[sweep]`` / ``[[sweep]]``) tables of a config, shape-checked."""
    value = data.get(name, [])
    if isinstance(value, dict) and name == "sweep":
        value = [value]
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        shape = "[sweep] or [[sweep]] tables" if name == "sweep" else "[[cell]] tables"
        raise ValueError(f"{path}: '{name}' must be {shape}, got {type(value).__name__}")
    return value


def _check_fields(path: Path, where: str, what: str, table: dict[str, Any]) -> None:
    unknown = set(table) - _FIELDS
    if unknown:
        raise ValueError(
            f"{path}: {where}: unknown {what} {sorted(unknown)}; valid: {sorted(_FIELDS)}"
        )


def _expand(path: Path, where: str, sweep: dict[str, Any]) -> _Product:
    """The cartesian product of a sweep table's axes (a value or a list of values each). The
    axis ``each``, a list of inline tables, varies several fields together: ``each =
    [{sampler = "ddim", steps = 20}, {sampler = "dpm-solver++", steps = 10}]``."""
    sweep = dict(sweep)
    each = sweep.pop("each", [{}])
    if not (
        isinstance(each, list) and each and all(isinstance(e, dict) and e for e in each)
    ) and each != [{}]:
        raise ValueError(
            f"{path}: {where}: 'each' must be a non-empty list of inline tables of cell fields, "
            f"got {each!r}"
        )
    for group in each:
        _check_fields(path, where, "field(s) in 'each'", group)
        clash = set(group) & set(sweep)
        if clash:
            raise ValueError(f"{path}: {where}: {sorted(clash)} set both in 'each' and as axes")
    _check_fields(path, where, "sweep axis", sweep)
    axes = {k: v if isinstance(v, list) else [v] for k, v in sweep.items()}
    for name, values in axes.items():
        table = name in TABLE_FIELDS  # an option table is one value (a list: several)
        if not values or any(
            isinstance(v, list) or (isinstance(v, dict) and not table) for v in values
        ):
            raise ValueError(
                f"{path}: {where}: axis {name!r} must be a value or a non-empty list of "
                f"values, got {sweep[name]!r}"
            )
    return _Product(axes, each)


class _Product:
    """A sweep's combinations, counted before any is built (a huge sweep is refused at once)."""

    def __init__(self, axes: dict[str, list[Any]], each: list[dict[str, Any]]) -> None:
        self.axes, self.each = axes, each

    def __len__(self) -> int:
        return math.prod(len(v) for v in self.axes.values()) * len(self.each)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for combo in itertools.product(*self.axes.values()):
            for group in self.each:
                yield {**dict(zip(self.axes, combo, strict=True)), **group}


def _list_choices() -> str:
    lines = ["Axes of a cell (field: default):"]
    for f in dataclasses.fields(Cell):
        lines.append(f"  {f.name}: {f.default!r}")
    lines.append("Choices:")
    for name, reg in CELL_CHOICES.items():
        folder = ", or a local diffusers from_pretrained folder (a path)" if name == "model" else ""
        lines.append(f"  {name}: {', '.join(reg)}{folder}")
    lines.append(f"  spacing: {', '.join(SPACINGS)}")
    lines.append(f"  end: {', '.join(ENDS)}")
    lines.append("Text encoders (field text; needs the [text] extra):")
    lines += [f"  {name}: {what}" for name, what in TEXT_ENCODERS.items()]
    lines.append("Samplers (defaults; order / spacing / end are cell fields):")
    for name in SAMPLERS:
        lines.append(f"  {name}: {describe(name)}")
    lines.append("Policy knobs:")
    depths = ", ".join(f"{m} {cfg['depth'] - 1}" for m, cfg in MODELS.items())
    for name, cls in POLICIES.items():
        if cls.knob_name is None:
            knob = "none"
        elif cls.integer_knob:
            knob = (
                f"{cls.knob_name}: exit after block index k (0-based), i.e. k + 1 blocks run, "
                f"k in [0, depth - 1] ({depths})"
            )
        else:
            knob = f"{cls.knob_name} in {list(cls.knob_range)}"
        lines.append(f"  {name}: {knob} (recipe {cls.recipe})")
    takes = [n for n, c in POLICIES.items() if "patience" in inspect.signature(c).parameters]
    lines.append(f"Policy options (cell fields): patience (an integer >= 1) for {', '.join(takes)}")
    lines.append("Cache knobs (cell field cache_knob; target_flop_ratio calibrates it when unset):")
    for name, cls in CACHES.items():
        extra = " (per row: composes with exit policies)" if cls.per_row else ""
        extra += " (a router learned per sampler and steps)" if cls.needs_router else ""
        knob = f"{cls.knob_name} in {list(cls.knob_range)}, default {cls.knob_default:g}"
        lines.append(f"  {name}: {knob}{extra}")
    lines.append("Cache options (cell fields): cache_branch (in [0, depth // 2]) for deepcache")
    return "\n".join(lines)


def _parser(prog: str = "bench.grid") -> argparse.ArgumentParser:
    p = make_parser(prog, __doc__)
    p.add_argument(
        "--config",
        type=Path,
        help="TOML file with [[cell]] tables or a [sweep] (default: the default sweep)",
    )
    p.add_argument("--quick", action="store_true", help="tiny smoke sweep (micro model)")
    p.add_argument("--list", action="store_true", help="print every axis and choice, then exit")
    p.add_argument("--dry-run", action="store_true", help="print the cells, run nothing")
    p.add_argument(
        "--samples", type=int, default=1000, help="samples per cell of the default sweep"
    )
    p.add_argument(
        "--out", type=Path, default=Path("results/grid"), help="records, tables and sample grids"
    )
    p.add_argument("--cache-dir", default=None, help="artifact cache (default: <repo>/.cache)")
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:N (default: each cell's, else cpu)"
    )
    p.add_argument(
        "--executor",
        default="inprocess",
        choices=list(EXECUTORS),
        help="where cells run: this process, --workers local processes, or a Dask cluster",
    )
    p.add_argument("--data-root", default=None, help="folder of a torchvision dataset")
    p.add_argument("--download", action="store_true", help="download datasets (online)")
    p.add_argument("--workers", type=int, default=2, help="local processes / LocalCluster size")
    p.add_argument(
        "--scheduler",
        default=None,
        help="dask: address of a running scheduler, tcp://host:port "
        "(default: start a LocalCluster)",
    )
    p.add_argument(
        "--retries", type=int, default=2, help="dask: reruns of a cell whose worker died"
    )
    p.add_argument(
        "--max-cells",
        type=at_least(1),
        default=MAX_CELLS,
        help="refuse a --config that expands to more cells than this",
    )
    return p


def _cells(a: argparse.Namespace) -> list[Cell]:
    """The sweep the command line asks for, every cell checked (:class:`Cell`)."""
    if a.config is not None and a.quick:
        raise ValueError("--quick and --config are two sweeps; pass one of them")
    if a.config is not None:
        cells = load_config(a.config, device=a.device, max_cells=a.max_cells)
    elif a.quick:
        cells = quick_cells(a.device or "cpu")
    else:
        cells = default_cells(a.samples, a.device or "cpu")
    return cells


def main(argv: list[str] | None = None, prog: str = "bench.grid") -> int:
    """``python -m bench.grid``; ``prog`` names the command in errors (a study that runs its
    sweep through this one signs them with its own name)."""
    p = _parser(prog)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.list:
        print(_list_choices())
        return 0
    try:
        if a.device is not None:
            a.device = str(resolve_device(a.device))  # 'auto' -> what it resolves to
        data = DataSource(a.data_root, a.download)
        opts = RunOptions(a.cache_dir, data, a.workers, a.scheduler, a.retries, tuple(a.plugin))
        if a.scheduler is not None and a.executor != "dask":
            raise ValueError("--scheduler needs --executor dask")
        cells = _cells(a)
        if a.dry_run:
            todo = {c.key for c in pending(cells, a.out, move_bad=False)}
            for c in cells:
                where = "" if c.dataset == "digits" else f"{c.dataset} "
                seed = f" seed {c.seed}" if c.seed else ""
                print(f"{c.key}  {'todo' if c.key in todo else 'done'}  {where}{c.label()}{seed}")
            return 0
        remote = a.executor == "dask" and a.scheduler is not None  # workers hold their data
        check_sweep(cells, data, local=not remote)  # data, weights, extras: one line now
        if a.executor == "dask":
            check_dask(a.scheduler)
    except (ValueError, TypeError) as e:
        p.error(str(e))
    try:
        return _run(cells, a.out, a.executor, opts)
    except OSError as e:  # e.g. the disk filled up between cells
        print(f"{p.prog}: error: {os_error_line(e)}", file=sys.stderr)
        return 1


def _run(cells: list[Cell], out: Path, executor: str, opts: RunOptions) -> int:
    todo = pending(cells, out)
    log.info("%d cells, %d already done", len(cells), len(cells) - len(todo))
    status = EXECUTORS[executor](todo, out, opts)
    unique = list({c.key: c for c in cells}.values())
    records = [r for c in unique if (r := read_record(out, c)) is not None]
    done = {r["key"] for r in records}
    keys = {c.key for c in unique}
    failures = [
        f for f in load_records(out, "failed") if f.get("key") in keys and f["key"] not in done
    ]
    write_tables(out, records, failures)
    print((out / "summary.md").read_text() if records else "no records")
    if failures:
        print(f"{len(failures)} cell(s) failed; errors under {out / 'failed'}; rerun to retry")
    claimed = sum(s == "claimed" for s in status.values())
    if claimed:
        print(f"{claimed} cell(s) were run by another process on this --out; rerun to gather them")
    unsaved = sum(s == "unsaved" for s in status.values())
    if unsaved:
        print(f"{unsaved} cell(s) finished but could not be saved (their records are in the log)")
    # A cell with neither a record nor a failure record (and not another process's) is lost,
    # e.g. when neither could be written: never exit 0 then.
    failed = {f["key"] for f in failures}
    lost = [k for k in keys - done - failed if status.get(k) != "claimed"]
    if lost:
        print(
            f"{len(lost)} cell(s) have neither a record nor a failure record under {out}: "
            "check the disk, then rerun"
        )
    return 1 if failures or unsaved or lost else 0


if __name__ == "__main__":
    sys.exit(main())
