"""Re-time a sweep's cells: the side-by-side wall ratio per call measured again, nothing else.

A cell's record carries one wall ratio, timed while its sweep ran; when other processes shared
the cores it is flagged ``timing_unstable`` and not trusted (:mod:`bench.run`). Rerunning the
cell would redo its sampling and FID; this command redoes only the timing.
``python -m bench.studies.retime --grid results/X`` rebuilds each record's pipeline with the
knobs it ran (``knob_used`` / ``cache_knob_used``: no calibration), captures the calls of one
sampling batch exactly as the run did (a whole sampling run for a cache, every few calls
otherwise), and times the executor against the plain model over those calls, interleaved
(:func:`bench.run.side_by_side_wall_ratio`). Run it with nothing else on the machine.

Output: ``<out>/retime.md`` and ``retime.csv``, one row per record: its label, FLOP ratio per
call (recorded, and of the re-run batch: the first ``TIMING_BATCH`` samples, so equal to the
record's when the cell has no more samples than that), the recorded wall ratio and whether it
was flagged, and the new one with its flag. The records themselves are left untouched.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from adaptive.policies import POLICIES
from adaptive.recipes import RECIPES
from bench.cache import ArtifactCache, atomic_write_bytes, preflight
from bench.cell import Cell
from bench.cli import make_parser
from bench.devices import AUTOCAST
from bench.pipeline import build_pipeline
from bench.run import TIMING_BATCH, capture_for, side_by_side_wall_ratio
from bench.store import cell_of, load_records

__all__ = ["main", "retime_record"]

log = logging.getLogger(__name__)


def cell_as_run(rec: dict[str, Any]) -> Cell:
    """The record's cell with the knobs it ran fixed (no FLOP target, so nothing calibrates;
    a recipe trained for its target, DyDiT's, keeps it: the target names its model)."""
    cell = cell_of(rec)
    knob = rec.get("knob_used") if POLICIES[cell.policy].knob_name is not None else None
    cache_knob = rec.get("cache_knob_used") if cell.cache != "none" else None
    trained_for = "flop_target" in RECIPES[cell.recipe].weights
    target = cell.target_flop_ratio if trained_for else None
    return dataclasses.replace(
        cell, target_flop_ratio=target, knob=knob, cache_knob=cache_knob, exit_flop_ratio=None
    )


def retime_record(rec: dict[str, Any], cache: ArtifactCache) -> dict[str, Any]:
    """One row: the record's label and FLOP ratio, its recorded timing and a new one."""
    cell = cell_as_run(rec)
    pipe = build_pipeline(cell, cache, progress=False)
    capture = capture_for(pipe.executor, cell.steps)
    pipe.sample(min(TIMING_BATCH, cell.samples), cell.seed, denoiser=pipe.denoiser(capture))
    ex, amp = pipe.executor, AUTOCAST[cell.autocast]
    rerun = ex.executed_flops / (max(ex.rows, 1) * pipe.unpruned_flops)  # the same cell ran?
    wall = side_by_side_wall_ratio(ex, pipe.base.model, capture.calls, amp, pipe.device)
    return {
        "key": rec["key"],
        "label": rec.get("label", cell.label()),
        "seed": cell.seed,
        "flop_ratio_per_call": rec["flop_ratio_per_call"],
        "flop_ratio_rerun": rerun,
        "recorded_wall_ratio": rec.get("wall_ratio_per_call"),
        "recorded_unstable": rec.get("timing_unstable"),
        "wall_ratio_per_call": wall["wall_ratio_per_call"],
        "timing_unstable": wall["timing_unstable"],
        "timing_other_cores": wall["timing_other_cores"],
    }


def _write(df: pd.DataFrame, out: Path) -> None:
    atomic_write_bytes(out / "retime.csv", df.to_csv(index=False).encode())
    df = df.assign(gap=df.wall_ratio_per_call - df.flop_ratio_per_call)
    text = "# Wall ratio per call, re-timed\n\n" + df.to_markdown(index=False, floatfmt=".3f")
    atomic_write_bytes(out / "retime.md", (text + "\n").encode())


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.studies.retime``: re-time every record of ``--grid`` (or only the
    flagged ones with ``--unstable``) and write the table; 1 if any record could not be
    re-timed (each is named in the log; the others are written)."""
    p = make_parser("bench.studies.retime", __doc__)
    p.add_argument("--grid", type=Path, required=True, help="a grid's --out folder")
    p.add_argument("--out", default=None, help="output folder (default: GRID)")
    p.add_argument("--unstable", action="store_true", help="only records flagged unstable")
    p.add_argument("--cells", nargs="+", default=None, help="only labels containing these")
    p.add_argument("--cache-dir", default=None, help="artifact cache (default: <repo>/.cache)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    records = [
        r
        for r in load_records(a.grid)
        if (not a.unstable or r.get("timing_unstable"))
        and (a.cells is None or any(c in r.get("label", "") for c in a.cells))
    ]
    if not records:
        p.error(f"no records to re-time under {a.grid / 'records'}")
    if a.out is None:  # written beside the records (--out itself: checked by the parser)
        try:
            preflight(a.grid)
        except ValueError as e:
            p.error(str(e))
    out = Path(a.out) if a.out is not None else a.grid
    cache, rows, failed = ArtifactCache(a.cache_dir), [], 0
    for i, rec in enumerate(records, 1):
        try:
            rows.append(retime_record(rec, cache))
        except (ValueError, RuntimeError, KeyError) as e:  # one cell, not the whole run
            failed += 1
            log.warning("%d/%d %s: not re-timed (%s)", i, len(records), rec.get("label"), e)
            continue
        new, old = rows[-1]["wall_ratio_per_call"], rec.get("wall_ratio_per_call")
        log.info(
            "%d/%d %s: wall ratio %s (recorded %s)", i, len(records), rec.get("label"), new, old
        )
        _write(pd.DataFrame(rows), out)  # after every cell: an interrupted run keeps its rows
    if rows:
        print((out / "retime.md").read_text())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
