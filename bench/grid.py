"""Sweep pipeline cells: training recipe x pruning x exit policy x sampler x steps x guidance.

``python -m bench.grid`` runs the default digits sweep (41 cells; the trained models ship with
the project, anything else is trained on first use and cached); ``--quick`` a tiny smoke sweep;
``--config FILE.toml`` any sweep (``[[cell]]`` tables and/or a ``[sweep]`` of axes; examples in
bench/sweeps/); ``--list`` prints every axis and choice; ``--dry-run`` the cells and which are
done. Then ``python -m bench.report`` draws the figures.

Each finished cell is written atomically as ``<out>/records/<cell key>.json``, so an interrupted
sweep (even ``kill -9``) redoes only unfinished cells; a cell that raises is written to
``<out>/failed/`` with its error, the others go on, and the next run retries it. The records are
gathered into ``table.csv``, ``table.parquet`` and ``summary.md`` (best FID per FLOP budget).

A record holds FID/KID (with the extractor's name), FLOP ratios (per call vs the unpruned
full-depth model, and in total vs DDPM with all T steps), layer ratio, NFE, seconds per image
(median over sampling batches after the warm-up one), a side-by-side wall ratio per call,
params/MACs, an exit-block x timestep histogram and the environment. Samples with NaN/Inf are
recorded with ``nonfinite = true`` and no FID.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import logging
import platform
import statistics
import subprocess
import sys
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from adaptive.calibrate import calibrate
from adaptive.executor import CostModel, EarlyExitDenoiser
from adaptive.policies import POLICIES, make_policy
from adaptive.recipes import RECIPES
from bench.cache import ArtifactCache
from bench.cell import CELL_CHOICES, Cell, cell_prune_config, cell_train_config
from bench.data import dataset_info, set_data_options
from bench.measure import interleaved_times, spread
from bench.metrics import evaluate, get_extractor
from bench.sampling import IMAGE_SAMPLER_DEFAULTS, generate, save_grid
from bench.store import (
    claim,
    failure_path,
    load_records,
    os_error_line,
    pending,
    preflight,
    read_record,
    record_path,
    sample_path,
    write_failure,
    write_record,
    write_tables,
)
from bench.train import AUTOCAST, load_or_train, resolve_device
from models import MODELS
from pruning.pipeline import load_or_prune
from samplers import ClassifierFreeGuidance

__all__ = [
    "Cell",
    "default_cells",
    "failure_path",
    "load_config",
    "load_records",
    "main",
    "pending",
    "quick_cells",
    "record_path",
    "run_and_store",
    "run_cell",
    "write_tables",
]

log = logging.getLogger(__name__)


def default_cells(samples: int = 1000, device: str = "cpu") -> list[Cell]:
    """The default digits sweep (41 cells):

    - every exit policy, calibrated to FLOP ratio 0.65 on its own recipe's model, and the
      full-depth reference, x {DDPM 100, DDIM 20, DPM-Solver++ 10};
    - the step axis for `full` and `uem`: DDIM 50 and DPM-Solver++ 20 as well;
    - pruning: `full` and `uem` with 30% of heads / MLP channels pruned (diff-pruning, then
      fine-tuned), x {DDIM 20, DPM-Solver++ 10};
    - every fine-tuned recipe's model at full depth (DDIM 20; `full-ft` is the equally-trained
      control): what its training costs the full model.
    """
    main_runs = [("ddpm", 100), ("ddim", 20), ("dpm-solver++", 10)]
    common = dict(samples=samples, device=device)
    cells = []
    for policy, cls in POLICIES.items():
        target = None if policy == "full" else 0.65
        runs = main_runs + ([("ddim", 50), ("dpm-solver++", 20)] if policy in REF else [])
        for sampler, steps in runs:
            cells.append(
                Cell(
                    recipe=cls.recipe,
                    policy=policy,
                    target_flop_ratio=target,
                    sampler=sampler,
                    steps=steps,
                    **common,
                )
            )
    for policy in REF:
        for sampler, steps in main_runs[1:]:
            cells.append(
                Cell(
                    recipe=POLICIES[policy].recipe,
                    policy=policy,
                    target_flop_ratio=None if policy == "full" else 0.65,
                    prune_ratio=0.3,
                    sampler=sampler,
                    steps=steps,
                    **common,
                )
            )
    for recipe in RECIPES:
        if recipe != "full":
            cells.append(Cell(recipe=recipe, policy="full", sampler="ddim", steps=20, **common))
    return cells


REF = ("full", "uem")  # the cells that also sweep steps and pruning


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


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# Samples are generated in batches of this size; the first batch is the warm-up and the median
# of the others' seconds per image is the cell's wall-clock (one extra warm-up batch is run when
# a cell has fewer than two batches).
TIMING_BATCH = 250


def _wall_clock(
    run_batch: Any, batches: list[float], sizes: list[int]
) -> tuple[float, list[float]]:
    """Median seconds per image over the timed batches after the first (warm-up)."""
    per_image = [s / m for s, m in zip(batches[1:], sizes[1:], strict=True) if m == sizes[0]]
    if not per_image:  # fewer than two full batches: time one more after this warm-up
        extra: list[float] = []
        run_batch(extra)
        per_image = [extra[0] / sizes[0]]
    return statistics.median(per_image), per_image


EXIT_T_BINS = 20  # timestep bins of the exit-block histogram in each record


def _exit_histogram(ex: EarlyExitDenoiser, T: int) -> dict[str, Any]:
    """Counts of (timestep bin, exit block) over every (sample, call) of the run."""
    arr = ex.trace.arrays()
    t_bin = np.minimum((arr["t"] / T * EXIT_T_BINS).astype(int), EXIT_T_BINS - 1)
    counts = np.zeros((EXIT_T_BINS, ex.model.depth), dtype=np.int64)
    np.add.at(counts, (t_bin, arr["exit_block"].astype(int)), 1)
    return {"t_edges": np.linspace(0, T, EXIT_T_BINS + 1).tolist(), "counts": counts.tolist()}


WALL_CALLS = 6  # denoiser calls of the first batch replayed for the side-by-side wall ratio
WALL_REPEATS = 5


class _Capture:
    """Passes calls through to ``inner`` and keeps a copy of every ``every``-th input among the
    first ``first`` calls (the first generation batch)."""

    def __init__(self, inner: Any, first: int, every: int) -> None:
        self.inner, self.first, self.every = inner, first, every
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        self.n = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None):
        if self.n < self.first and self.n % self.every == 0:
            self.calls.append((x.clone(), t.clone(), None if cond is None else cond.clone()))
        self.n += 1
        return self.inner(x, t, cond)


# A side-by-side timing whose plain-model reference varies by more than this between repeats
# (max / min - 1) is re-measured once with twice the repeats, then flagged `timing_unstable`.
UNSTABLE_SPREAD = 0.25


def _side_by_side_wall_ratio(ex, reference, calls, amp, device) -> dict[str, Any]:
    """Wall-clock of the executor over the captured calls / the unpruned model's plain forward
    over the same calls, as the ratio of interleaved medians (DESIGN "Wall-clock"), with the
    per-repeat ratios and whether the reference itself was unstable (a busy machine)."""
    if not calls:
        return {"wall_ratio_per_call": None, "wall_ratio_repeats": [], "timing_unstable": None}

    def run(fn):
        return lambda: [fn(x, t, c) for x, t, c in calls]

    for repeats in (WALL_REPEATS, 2 * WALL_REPEATS):
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            times = interleaved_times({"plain": run(reference), "cell": run(ex)}, repeats)
        unstable = spread(times["plain"]) > UNSTABLE_SPREAD
        if not unstable:
            break
        log.warning(
            "plain-model timing varied by %.0f%%; re-measuring", 100 * spread(times["plain"])
        )
    ratios = [c / p for c, p in zip(times["cell"], times["plain"], strict=True)]
    return {
        "wall_ratio_per_call": statistics.median(times["cell"]) / statistics.median(times["plain"]),
        "wall_ratio_repeats": ratios,
        "timing_unstable": unstable,
    }


def run_cell(
    cell: Cell,
    cache: ArtifactCache,
    device: torch.device | None = None,
    sample_grid: Path | None = None,
) -> dict[str, Any]:
    """Run one cell end to end and return its record (``device`` overrides ``cell.device``).
    ``sample_grid``: write the first 100 samples there as a PNG grid."""
    device = resolve_device(cell.device) if device is None else device
    tcfg = cell_train_config(cell)
    base = load_or_train(tcfg, cache, device, progress=True)
    model, params_unpruned = base.model, sum(p.numel() for p in base.model.parameters())
    if cell.prune_ratio > 0:
        model = load_or_prune(cell_prune_config(cell, tcfg), cache, device, progress=True).model
    schedule = base.schedule
    unpruned_flops = CostModel(base.model, schedule.T).full
    sampler_kw = IMAGE_SAMPLER_DEFAULTS.get(cell.sampler, {})
    guided = {"guidance": cell.guidance, "paired": cell.cfg_exit_together}
    knob, cal_ratio = cell.knob, None
    if cell.target_flop_ratio is not None:
        cal = calibrate(
            model,
            schedule,
            cell.policy,
            cell.target_flop_ratio,
            sampler=cell.sampler,
            steps=cell.steps,
            n=64,
            options=cell.options,
            sampler_kw=sampler_kw,
            **guided,
        )
        knob, cal_ratio = cal.knob, cal.achieved
    ex = EarlyExitDenoiser(
        model,
        make_policy(cell.policy, knob, **cell.options),
        schedule.T,
        paired=cell.cfg_exit_together,
    )
    info = dataset_info(cell.dataset)
    shape = (info.channels, info.img_size, info.img_size)
    capture = _Capture(ex, first=cell.steps, every=max(1, cell.steps // WALL_CALLS))
    denoiser, labels = capture, None
    if cell.guidance is not None:
        denoiser = ClassifierFreeGuidance(capture, cell.guidance, info.num_classes)
        labels = torch.arange(cell.samples) % info.num_classes
    amp = AUTOCAST[cell.autocast]

    def sample(n: int, seed: int, timings: list[float]) -> tuple[torch.Tensor, int]:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            return generate(
                denoiser,
                schedule,
                cell.sampler,
                cell.steps,
                n,
                shape,
                batch_size=TIMING_BATCH,
                seed=seed,
                cond=labels[:n] if labels is not None else None,
                device=device,
                timings=timings,
            )

    batch_seconds: list[float] = []
    imgs, nfe = sample(cell.samples, cell.seed, batch_seconds)
    executed_flops, rows, layer_ratio = ex.executed_flops, ex.rows, ex.layer_ratio
    exit_hist = _exit_histogram(ex, schedule.T)
    if sample_grid is not None:
        save_grid(imgs[:100], sample_grid, nrow=10)
    sizes = [min(TIMING_BATCH, cell.samples - s) for s in range(0, cell.samples, TIMING_BATCH)]
    seconds, per_image = _wall_clock(
        lambda t: sample(sizes[0], cell.seed + 1, t), batch_seconds, sizes
    )
    wall = _side_by_side_wall_ratio(ex, base.model, capture.calls, amp, device)
    capture.calls.clear()
    nonfinite = not bool(torch.isfinite(imgs).all())
    metrics: dict[str, Any] = {"fid": None, "kid": None, "extractor": None}
    if not nonfinite:
        ext = get_extractor(cell.extractor, cell.dataset, cache, device=str(device))
        metrics = evaluate(imgs, cell.dataset, ext, cache, split=cell.reference)
    rows_per_nfe = 2 if cell.guidance is not None else 1
    reference = unpruned_flops * schedule.T * cell.samples * rows_per_nfe
    return {
        **dataclasses.asdict(cell),
        "key": cell.key,
        "label": cell.label(),
        "knob_used": knob,
        "calibration_flop_ratio": cal_ratio,
        "fid": metrics["fid"],
        "kid": metrics["kid"],
        "extractor": metrics["extractor"],
        "nonfinite": nonfinite,
        "nfe": nfe,
        "flop_ratio_per_call": executed_flops / (max(rows, 1) * unpruned_flops),
        "flop_ratio_vs_reference": executed_flops / reference,
        "layer_ratio": layer_ratio,
        "seconds_per_image": seconds,
        "seconds_per_image_repeats": per_image,
        # Side by side: this cell's denoiser vs the unpruned model's plain forward on the same
        # captured inputs of its first batch, interleaved medians (comparable across cells),
        # with every repeat's ratio and the busy-machine flag.
        **wall,
        "timing_batch": sizes[0],
        "params": sum(p.numel() for p in model.parameters()),
        "params_unpruned": params_unpruned,
        "macs_per_call": ex.costs.full / 2,  # per sample, full depth (FLOPs = 2 x MACs)
        "exit_histogram": exit_hist,
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "host": platform.node(),
        "git_commit": _git_commit(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def run_and_store(
    cell: Cell, out: str | Path, cache_dir: str | None = None, threads: int | None = None
) -> tuple[str, str | None]:
    """Claim ``cell``, run it and write its record (or, if it raised, its failure). Returns
    (status, error) with status "done", "failed", "claimed" (another process holds the cell)
    or "unsaved" (computed, but the record could not be written: it is logged in full so it
    is not lost). Safe to call from any process that sees ``out``: this is the unit of work of
    every executor."""
    out = Path(out)
    if threads:
        torch.set_num_threads(threads)
    with claim(out, cell) as mine:
        if not mine:
            log.info("cell %s (%s) is being run by another process", cell.key, cell.label())
            return "claimed", None
        if read_record(out, cell) is not None:  # finished by another process meanwhile
            return "done", None
        try:
            rec = run_cell(cell, ArtifactCache(cache_dir), sample_grid=sample_path(out, cell))
        except Exception as e:  # a real failure: record it, let the sweep go on
            error = f"{type(e).__name__}: {e}"
            log.error("cell %s (%s) failed: %s", cell.key, cell.label(), error)
            try:
                write_failure(out, cell, error + "\n" + traceback.format_exc())
            except OSError as io_error:
                log.error("its failure record could not be saved: %s", os_error_line(io_error))
            return "failed", error
        try:
            write_record(out, cell, rec)
        except OSError as e:
            error = f"record not saved: {os_error_line(e)}"
            log.error(
                "cell %s (%s) finished but its %s; the record:\n%s",
                cell.key,
                cell.label(),
                error,
                json.dumps(rec),
            )
            return "unsaved", error
    log.info("cell %s done: %s, FID %s", cell.key, cell.label(), rec["fid"])
    return "done", None


def load_config(path: Path, device: str | None = None) -> list[Cell]:
    """Cells from a TOML file: ``[[cell]]`` tables, and/or ``[sweep]`` (or several
    ``[[sweep]]``) tables with a value or a list of values per axis, each expanded to its
    cartesian product. ``device``, if given, overrides every cell's device.

    Everything is checked before any cell runs: the file's shape (only ``cell`` and ``sweep``
    at the top, tables where tables belong, scalars as axis values), unknown fields, and each
    cell's values (:class:`Cell`). A failure is one ``ValueError`` naming the file, the table
    and the field."""
    import itertools
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"cannot read config {path}: {e}") from e
    fields = {f.name for f in dataclasses.fields(Cell)}
    extra = set(data) - {"cell", "sweep"}
    if extra:
        raise ValueError(f"{path}: unknown section(s) {sorted(extra)}; valid: cell, sweep")
    override = {"device": device} if device else {}

    def make(where: str, values: dict[str, Any]) -> Cell:
        try:
            return Cell(**(values | override))
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: {where}: {e}") from e

    def tables(name: str, allow_single: bool) -> list[dict[str, Any]]:
        value = data.get(name, [])
        if isinstance(value, dict) and allow_single:
            value = [value]
        if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
            shape = "[sweep] or [[sweep]] tables" if allow_single else "[[cell]] tables"
            raise ValueError(f"{path}: '{name}' must be {shape}, got {type(value).__name__}")
        return value

    cells = []
    for i, table in enumerate(tables("cell", allow_single=False), 1):
        unknown = set(table) - fields
        if unknown:
            raise ValueError(
                f"{path}: [[cell]] #{i}: unknown cell field(s) {sorted(unknown)}; "
                f"valid: {sorted(fields)}"
            )
        cells.append(make(f"[[cell]] #{i}", table))
    for i, sweep in enumerate(tables("sweep", allow_single=True), 1):
        axes = {k: v if isinstance(v, list) else [v] for k, v in sweep.items()}
        unknown = set(axes) - fields
        if unknown:
            raise ValueError(
                f"{path}: sweep #{i}: unknown sweep axis {sorted(unknown)}; valid: {sorted(fields)}"
            )
        for name, values in axes.items():
            if not values or any(isinstance(v, (dict, list)) for v in values):
                raise ValueError(
                    f"{path}: sweep #{i}: axis {name!r} must be a value or a non-empty list of "
                    f"values, got {sweep[name]!r}"
                )
        for combo in itertools.product(*axes.values()):
            cells.append(make(f"sweep #{i}", dict(zip(axes, combo, strict=True))))
    if not cells:
        raise ValueError(f"{path} defines no [[cell]] tables and no [sweep] / [[sweep]]")
    return cells


def _list_choices() -> str:
    lines = ["Axes of a cell (field: default):"]
    for f in dataclasses.fields(Cell):
        lines.append(f"  {f.name}: {f.default!r}")
    lines.append("Choices:")
    for name, reg in CELL_CHOICES.items():
        lines.append(f"  {name}: {', '.join(reg)}")
    lines.append("Policy knobs:")
    depths = ", ".join(f"{m} {cfg['depth'] - 1}" for m, cfg in MODELS.items())
    for name, cls in POLICIES.items():
        if cls.knob_name is None:
            knob = "none"
        elif cls.integer_knob:
            knob = f"{cls.knob_name}: a 0-based block index in [0, depth - 1] ({depths})"
        else:
            knob = f"{cls.knob_name} in {list(cls.knob_range)}"
        lines.append(f"  {name}: {knob} (recipe {cls.recipe})")
    takes = [n for n, c in POLICIES.items() if "patience" in inspect.signature(c).parameters]
    lines.append(f"Policy options (cell fields): patience (an integer >= 1) for {', '.join(takes)}")
    return "\n".join(lines)


EXECUTORS = ("inprocess", "local", "dask")


def threads_per_worker(workers: int) -> int:
    """This machine's cores split between ``workers`` processes (at least one each)."""
    import os

    return max(1, (os.cpu_count() or 1) // workers)


def run_local(cells: list[Cell], out: Path, cache_dir: str | None, workers: int) -> dict[str, str]:
    """Each cell in one of ``workers`` fresh processes (spawned: forking after torch has
    started its thread pools can deadlock); CPU threads are split between them."""
    import concurrent.futures as cf
    import multiprocessing as mp

    threads = threads_per_worker(workers)
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(run_and_store, c, out, cache_dir, threads): c for c in cells}
        status = {}
        for fut in tqdm(cf.as_completed(futures), total=len(futures), desc="cells"):
            status[futures[fut].key] = fut.result()[0]
    return status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.grid",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="TOML file with [[cell]] tables or a [sweep]")
    p.add_argument("--quick", action="store_true", help="tiny smoke sweep (micro model)")
    p.add_argument("--list", action="store_true", help="print every axis and choice, then exit")
    p.add_argument("--dry-run", action="store_true", help="print the cells, run nothing")
    p.add_argument("--samples", type=int, default=1000, help="samples per cell (default sweep)")
    p.add_argument("--out", type=Path, default=Path("results/grid"), help="records and tables")
    p.add_argument("--cache-dir", default=None, help="artifact cache (default: <repo>/.cache)")
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:N (default: each cell's, else cpu)"
    )
    p.add_argument(
        "--executor",
        default="inprocess",
        choices=EXECUTORS,
        help="where cells run: this process, --workers local processes, or a Dask cluster",
    )
    p.add_argument("--data-root", default=None, help="folder of a torchvision dataset")
    p.add_argument("--download", action="store_true", help="download datasets (online)")
    p.add_argument("--workers", type=int, default=2, help="local processes / LocalCluster size")
    p.add_argument(
        "--scheduler", default=None, help="dask: address of a running scheduler (tcp://host:port)"
    )
    p.add_argument(
        "--retries", type=int, default=2, help="dask: reruns of a cell whose worker died"
    )
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.list:
        print(_list_choices())
        return 0
    try:
        if a.device is not None:
            a.device = str(resolve_device(a.device))  # 'auto' -> what it resolves to
        if a.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {a.workers}")
        set_data_options(a.data_root, a.download)  # inherited by local and LocalCluster workers
        if a.scheduler is not None and a.executor != "dask":
            raise ValueError("--scheduler needs --executor dask")
        if a.config is not None and a.quick:
            raise ValueError("--quick and --config are two sweeps; pass one of them")
        if a.config is not None:
            cells = load_config(a.config, device=a.device)
        elif a.quick:
            cells = quick_cells(a.device or "cpu")
        else:
            cells = default_cells(a.samples, a.device or "cpu")
        for device in sorted({c.device for c in cells}):
            resolve_device(device)  # e.g. cuda cells on a machine without CUDA: fail now
        if a.dry_run:
            todo = pending(cells, a.out, move_bad=False)
            keys = {c.key for c in todo}
            for c in cells:
                print(f"{c.key}  {'todo' if c.key in keys else 'done'}  {c.label()}")
            return 0
        preflight(a.out, ArtifactCache(a.cache_dir).root)  # before any work, not after it
    except (ValueError, TypeError) as e:
        p.error(str(e))
    try:
        return _run(cells, a)
    except OSError as e:  # e.g. the disk filled up between cells
        print(f"python -m bench.grid: error: {os_error_line(e)}", file=sys.stderr)
        return 1


def _run(cells: list[Cell], a: argparse.Namespace) -> int:
    todo = pending(cells, a.out)
    log.info("%d cells, %d already done", len(cells), len(cells) - len(todo))
    if a.executor == "inprocess":
        status = {c.key: run_and_store(c, a.out, a.cache_dir)[0] for c in tqdm(todo, desc="cells")}
    elif a.executor == "local":
        status = run_local(todo, a.out, a.cache_dir, a.workers)
    else:
        from bench.distributed import run_dask

        status = run_dask(
            todo,
            a.out,
            a.cache_dir,
            scheduler=a.scheduler,
            workers=a.workers,
            retries=a.retries,
        )
    unique = list({c.key: c for c in cells}.values())
    records = [r for c in unique if (r := read_record(a.out, c)) is not None]
    done = {r["key"] for r in records}
    keys = {c.key for c in unique}
    failures = [
        f for f in load_records(a.out, "failed") if f.get("key") in keys and f["key"] not in done
    ]
    write_tables(a.out, records, failures)
    print((a.out / "summary.md").read_text() if records else "no records")
    if failures:
        print(f"{len(failures)} cell(s) failed; errors under {a.out / 'failed'}; rerun to retry")
    claimed = sum(s == "claimed" for s in status.values())
    if claimed:
        print(f"{claimed} cell(s) were run by another process on this --out; rerun to gather them")
    unsaved = sum(s == "unsaved" for s in status.values())
    if unsaved:
        print(f"{unsaved} cell(s) finished but could not be saved (their records are in the log)")
    return 1 if failures or unsaved else 0


if __name__ == "__main__":
    sys.exit(main())
