"""The results store of a sweep: one JSON record per finished cell, named by the cell's key.

Layout under a sweep's ``out`` folder::

    records/<key>.json   a finished cell (written atomically: it exists only once complete)
    failed/<key>.json    a cell that raised, with its error (retried by the next run)
    samples/<key>.png    the cell's first 100 samples
    claims/<key>.lock    held (``fcntl.flock``) by the process running the cell; removed
                         when the cell ends
    corrupt/             unreadable or mismatched records, moved aside for inspection
    superseded/          records made with a model the cell no longer runs (retrained)

A record counts as done only if it parses and matches its cell (key and every cell field); any
other file in its place is moved to ``corrupt/`` with a warning and its cell runs again, so no
result is silently lost. A record also names the model it measured (``model_key``, the artifact
key of the checkpoint or pruned model): when the cell's model is now another one (a new training
budget, retrained shipped checkpoints) the record is moved to ``superseded/`` and the cell runs
again, so a table never mixes numbers of two models under one cell key.

A process claims a cell before running it, so concurrent sweeps on one
``out`` split the work; the kernel drops the claim of a process that dies, so a killed sweep's
cells are free again at once. Locks need a filesystem with working ``flock`` (local disks, most
NFS setups); without ``fcntl`` (Windows) claims are no-ops and records stay atomic.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.cache import atomic_write_bytes, file_lock, os_error_line
from bench.summary import KID_NOTE, write_tables

if TYPE_CHECKING:
    from bench.cell import Cell

__all__ = [
    "KID_NOTE",
    "cell_of",
    "claim",
    "failure_path",
    "load_records",
    "os_error_line",
    "pending",
    "read_record",
    "record_path",
    "sample_path",
    "write_failure",
    "write_record",
    "write_tables",
]

log = logging.getLogger(__name__)


def record_path(out: Path, cell: Cell) -> Path:
    """Where ``cell``'s record lives under ``out``."""
    return out / "records" / f"{cell.key}.json"


def sample_path(out: Path, cell: Cell) -> Path:
    """Where ``cell``'s sample grid (PNG) lives under ``out``."""
    return out / "samples" / f"{cell.key}.png"


def failure_path(out: Path, cell: Cell) -> Path:
    """Where ``cell``'s failure record lives under ``out``."""
    return out / "failed" / f"{cell.key}.json"


# Cell fields a record holds in resolved form, starting with the cell's value: the extractor's
# full name (kind, dataset, weights hash) and the device torch resolved.
RESOLVED_FIELDS = ("extractor", "device")


def cell_of(rec: dict[str, Any]) -> Cell:
    """The cell a finished record measured, rebuilt from its fields (a resolved field back to
    the name the cell gave: ``cnn-digits-89de92c8`` is ``cnn``); a ``ValueError`` unless the
    rebuilt cell has the record's key."""
    from bench.cell import Cell
    from bench.metrics import EXTRACTORS

    fields = {f.name: rec[f.name] for f in dataclasses.fields(Cell) if f.name in rec}
    have = fields.get("extractor")
    # A nonfinite cell is never scored, so its extractor stays unresolved (None): try each.
    names = [n for n in EXTRACTORS if have is None or str(have).startswith(n)]
    for name in names:
        cell = Cell(**{**fields, "extractor": name})
        if cell.key == rec.get("key"):
            return cell
    raise ValueError(f"record {rec.get('key')!r} does not rebuild its cell")


def _mismatch(rec: Any, cell: Cell) -> str | None:
    """Why ``rec`` is not a finished record of ``cell`` (None if it is)."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    if rec.get("key") != cell.key:
        return f"key {rec.get('key')!r} is not the cell's {cell.key!r}"
    for f in dataclasses.fields(cell):
        # Records written before a field existed hold its default.
        have, want = rec.get(f.name, f.default), getattr(cell, f.name)
        if f.name in RESOLVED_FIELDS:  # e.g. "cnn" -> "cnn-digits-89de92c8"
            # A nonfinite cell is never scored, so its extractor is never resolved (None).
            unresolved = have is None and want is not None and rec.get("nonfinite") is True
            same = unresolved or str(have).startswith(str(want))
        else:
            same = have == want
        if not same:
            return f"field {f.name} is {have!r}, the cell's is {want!r}"
    if "fid" not in rec or "flop_ratio_per_call" not in rec:
        return "incomplete (no fid / flop_ratio_per_call)"
    return None


def _superseded(rec: dict[str, Any], cell: Cell) -> str | None:
    """Why ``rec``, a finished record of ``cell``, measured another model than the one the
    cell runs now (None if the same)."""
    from bench.cell import cell_model_key  # lazily: the store itself needs no cell machinery

    want = cell_model_key(cell)
    have = rec.get("model_key")
    if have == want:
        return None
    made = "an unnamed model (a record from before models were named)" if have is None else have
    return f"made with {made}, the cell's model is now {want}"


def read_record(out: Path, cell: Cell, move_bad: bool = True) -> dict[str, Any] | None:
    """The cell's finished record, or None. A file that does not parse or does not match the
    cell is moved to ``out/corrupt/``, one made with another model than the cell's current one
    to ``out/superseded/`` (both kept for inspection; neither moved if ``move_bad`` is False),
    reported, and None returned."""
    path = record_path(out, cell)
    folder = "corrupt"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        problem, rec = f"unreadable ({os_error_line(e)})", None
    else:
        try:
            rec = json.loads(text)
            problem = _mismatch(rec, cell)
        except json.JSONDecodeError as e:
            problem, rec = f"not valid JSON ({e})", None
        if problem is None and (problem := _superseded(rec, cell)) is not None:
            folder = "superseded"
    if problem is None:
        return rec
    if not move_bad:
        log.warning("record %s is %s; its cell will run again", path, problem)
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    dest = out / folder / f"{cell.key}.{stamp}.json"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)
        log.warning("record %s is %s; moved to %s, its cell runs again", path, problem, dest)
    except OSError as e:
        log.warning("record %s is %s and could not be moved aside (%s)", path, problem, e)
    return None


def pending(cells: list[Cell], out: Path, move_bad: bool = True) -> list[Cell]:
    """The cells without a finished record, each once, in order (bad records are moved aside
    by :func:`read_record`, so their cells are pending again)."""
    seen: set[str] = set()
    todo = []
    for c in cells:
        if c.key not in seen and read_record(out, c, move_bad) is None:
            todo.append(c)
        seen.add(c.key)
    return todo


@contextmanager
def claim(out: Path, cell: Cell) -> Iterator[bool]:
    """Try to claim ``cell`` for this process: yields True while it holds the claim, False
    (at once, without waiting) if another live process holds it. The claim file names the
    holder's pid and start time while it runs, and is removed when the cell ends."""
    path = out / "claims" / f"{cell.key}.lock"
    with file_lock(path, wait=False) as held:
        if held and path.exists():  # absent where locks are no-ops (no fcntl)
            path.write_text(f"{os.getpid()} {datetime.now(UTC).isoformat(timespec='seconds')}\n")
        yield held


def write_record(out: Path, cell: Cell, rec: dict[str, Any]) -> None:
    """Write ``cell``'s record ``rec`` atomically and remove any failure record of it."""
    atomic_write_bytes(record_path(out, cell), json.dumps(rec, indent=2).encode())
    failure_path(out, cell).unlink(missing_ok=True)


def write_failure(out: Path, cell: Cell, error: str) -> None:
    """Record atomically that ``cell`` raised ``error`` (with its fields and a UTC timestamp)."""
    rec = {**dataclasses.asdict(cell), "key": cell.key, "label": cell.label(), "error": error}
    rec["timestamp"] = datetime.now(UTC).isoformat(timespec="seconds")
    atomic_write_bytes(failure_path(out, cell), json.dumps(rec, indent=2).encode())


# What a finished record holds beyond its cell's fields, by type (the tables and figures read
# these; a record without them is listed and skipped, never a traceback).
RECORD_SCHEMA: dict[str, tuple[type, ...]] = {
    "key": (str,),
    "label": (str,),
    "sampler": (str,),
    "steps": (int,),
    "seed": (int,),
    "nonfinite": (bool,),
    "fid": (int, float, type(None)),
    "flop_ratio_per_call": (int, float),
    "flop_ratio_vs_reference": (int, float),
}


def record_problem(rec: Any) -> str | None:
    """Why ``rec`` cannot be read as a finished record (None if it can)."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    for name, types in RECORD_SCHEMA.items():
        if name not in rec:
            return f"no field {name!r}"
        value = rec[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            return f"field {name!r} is {value!r}"
    return None


def load_records(out: Path, kind: str = "records") -> list[dict[str, Any]]:
    """Every readable record under ``out/<kind>`` (for tables; an unreadable file, or a finished
    record that lacks a field the tables read, is skipped with a warning naming it, and moved
    aside when its cell is next checked by :func:`pending`)."""
    records = []
    for path in sorted((out / kind).glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            log.warning("skipping unreadable record %s (%s)", path, e)
            continue
        problem = record_problem(rec) if kind == "records" else None
        if problem is not None:
            log.warning("skipping record %s: %s", path, problem)
            continue
        records.append(rec)
    return records
