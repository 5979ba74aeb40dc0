"""Sweep pipeline cells: training recipe x pruning x exit policy x sampler x steps.

``python -m bench.grid`` runs the default digits sweep (training or loading what it needs);
``--quick`` a tiny smoke sweep; ``--list`` prints every axis's choices; ``--dry-run`` the cells.
Each finished cell is written atomically as ``results/grid/records/<cell key>.json``, so an
interrupted sweep (even ``kill -9``) redoes only unfinished cells. The records are gathered into
``results/grid/table.csv`` and a markdown summary.

One cell = one frozen :class:`Cell`; its record holds FID/KID (with the extractor's name), FLOP
ratios (per call vs the unpruned full-depth model, and in total vs DDPM with all T steps on that
model), layer ratio, NFE, seconds per image, parameters, and the environment. A run whose
samples hold NaN/Inf is recorded with ``nonfinite = true`` and no FID.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from adaptive.calibrate import calibrate
from adaptive.executor import CostModel, EarlyExitDenoiser
from adaptive.policies import POLICIES, make_policy
from adaptive.recipes import RECIPES
from bench.cache import ArtifactCache, atomic_write_bytes, config_hash
from bench.data import DATASETS, dataset_info
from bench.metrics import evaluate, get_extractor
from bench.sampling import IMAGE_SAMPLER_DEFAULTS, generate
from bench.train import TrainConfig, load_or_train, resolve_device
from models import MODELS
from pruning.core import IMPORTANCES
from pruning.pipeline import PruneConfig, load_or_prune
from samplers import SAMPLERS

__all__ = ["Cell", "default_cells", "main", "quick_cells", "run_cell"]

log = logging.getLogger(__name__)


# The registry behind each named axis of a cell (validation and --list share it).
CELL_CHOICES = {
    "dataset": DATASETS,
    "model": MODELS,
    "recipe": RECIPES,
    "policy": POLICIES,
    "sampler": SAMPLERS,
    "prune_importance": IMPORTANCES,
}


@dataclass(frozen=True)
class Cell:
    """One pipeline configuration; its key (a hash of every field) names its record."""

    dataset: str = "digits"
    model: str = "tiny"
    recipe: str = "full"
    prune_ratio: float = 0.0
    prune_importance: str = "diff-pruning"
    policy: str = "full"
    knob: float | None = None
    target_flop_ratio: float | None = None  # calibrate the knob to this (overrides knob)
    sampler: str = "ddim"
    steps: int = 20
    samples: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        for name, registry in CELL_CHOICES.items():
            if getattr(self, name) not in registry:
                raise ValueError(
                    f"unknown {name} {getattr(self, name)!r}; valid choices: {', '.join(registry)}"
                )
        if not 0 <= self.prune_ratio < 1:
            raise ValueError(f"prune_ratio must be in [0, 1), got {self.prune_ratio}")
        if self.target_flop_ratio is not None and not 0 < self.target_flop_ratio <= 1:
            raise ValueError(f"target_flop_ratio must be in (0, 1], got {self.target_flop_ratio}")
        if self.samples < 2 or self.steps < 1:
            raise ValueError(
                f"samples must be >= 2 and steps >= 1, got {self.samples}, {self.steps}"
            )
        heads = POLICIES[self.policy].heads
        if heads != "none" and RECIPES[self.recipe].heads != heads:
            fits = [r for r, rec in RECIPES.items() if rec.heads == heads]
            raise ValueError(
                f"policy {self.policy!r} needs recipe {' or '.join(fits)}, got {self.recipe!r}"
            )
        if self.target_flop_ratio is None:
            make_policy(self.policy, self.knob)  # validates the knob's range

    @property
    def key(self) -> str:
        return config_hash(self, kind="cell")

    def label(self) -> str:
        if self.target_flop_ratio is not None:
            knob = f"@{self.target_flop_ratio}"
        elif self.knob is not None:
            knob = f"={self.knob:g}"
        else:
            knob = ""
        prune = f" prune{self.prune_ratio:g}" if self.prune_ratio else ""
        return f"{self.recipe}{prune} {self.policy}{knob} {self.sampler}-{self.steps}"


def default_cells(samples: int = 1000) -> list[Cell]:
    """Every policy at FLOP target 0.65 on its recipe, x {DDIM 20, DPM-Solver++ 20, DDPM 100},
    plus the full-depth reference and `uem`, each also pruned by 0.3."""
    runs = [("ddim", 20), ("dpm-solver++", 20), ("ddpm", 100)]
    cells = []
    for policy, cls in POLICIES.items():
        recipe = cls.recipe
        target = None if policy == "full" else 0.65
        for ratio in (0.0, 0.3) if policy in ("full", "uem") else (0.0,):
            for sampler, steps in runs:
                cells.append(
                    Cell(
                        recipe=recipe,
                        policy=policy,
                        target_flop_ratio=target,
                        prune_ratio=ratio,
                        sampler=sampler,
                        steps=steps,
                        samples=samples,
                    )
                )
    return cells


def quick_cells() -> list[Cell]:
    """A smoke sweep: the `micro` model, few steps and samples."""
    return [
        Cell(
            model="micro", recipe=r, policy=p, target_flop_ratio=tf, sampler=s, steps=4, samples=64
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


def _train_config(cell: Cell) -> TrainConfig:
    if cell.model == "micro":  # smoke runs: seconds, not minutes
        return TrainConfig(
            dataset=cell.dataset, model="micro", recipe=cell.recipe, steps=200, finetune_steps=50
        ).normalised()
    return TrainConfig(dataset=cell.dataset, model=cell.model, recipe=cell.recipe).normalised()


def run_cell(cell: Cell, cache: ArtifactCache, device: torch.device) -> dict[str, Any]:
    """Run one cell end to end and return its record."""
    tcfg = _train_config(cell)
    base = load_or_train(tcfg, cache, device, progress=False)
    model, params_unpruned = base.model, sum(p.numel() for p in base.model.parameters())
    if cell.prune_ratio > 0:
        ft = 50 if cell.model == "micro" else PruneConfig().finetune_steps
        pc = PruneConfig(
            base=tcfg, ratio=cell.prune_ratio, importance=cell.prune_importance, finetune_steps=ft
        )
        model = load_or_prune(pc, cache, device, progress=False).model
    schedule = base.schedule
    unpruned_flops = CostModel(base.model, schedule.T).full
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
            sampler_kw=IMAGE_SAMPLER_DEFAULTS.get(cell.sampler),
        )
        knob, cal_ratio = cal.knob, cal.achieved
    ex = EarlyExitDenoiser(model, make_policy(cell.policy, knob), schedule.T)
    info = dataset_info(cell.dataset)
    shape = (info.channels, info.img_size, info.img_size)
    t0 = time.perf_counter()
    imgs, nfe = generate(
        ex, schedule, cell.sampler, cell.steps, cell.samples, shape, seed=cell.seed, device=device
    )
    seconds = time.perf_counter() - t0
    nonfinite = not bool(torch.isfinite(imgs).all())
    metrics: dict[str, Any] = {"fid": None, "kid": None, "extractor": None}
    if not nonfinite:
        ext = get_extractor("cnn", cell.dataset, cache)
        metrics = evaluate(imgs, cell.dataset, ext, cache)
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
        "flop_ratio_per_call": ex.flop_ratio_vs(unpruned_flops),
        "flop_ratio_vs_reference": ex.executed_flops / (unpruned_flops * schedule.T * cell.samples),
        "layer_ratio": ex.layer_ratio,
        "seconds_per_image": seconds / cell.samples,
        "params": sum(p.numel() for p in model.parameters()),
        "params_unpruned": params_unpruned,
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "host": platform.node(),
        "git_commit": _git_commit(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# ----- the results store -----


def record_path(out: Path, cell: Cell) -> Path:
    return out / "records" / f"{cell.key}.json"


def load_records(out: Path) -> list[dict[str, Any]]:
    """Every complete record under ``out/records`` (unreadable files are skipped with a warning)."""
    records = []
    for path in sorted((out / "records").glob("*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            log.warning("skipping unreadable record %s (%s)", path, e)
    return records


def write_tables(out: Path, records: list[dict[str, Any]]) -> None:
    """``table.csv`` (every record) and ``summary.md`` (best FID per FLOP budget), atomically."""
    import pandas as pd

    if not records:
        return
    df = pd.DataFrame(records).sort_values(["flop_ratio_vs_reference", "label"])
    atomic_write_bytes(out / "table.csv", df.to_csv(index=False).encode())
    cols = [
        "label",
        "nfe",
        "flop_ratio_per_call",
        "flop_ratio_vs_reference",
        "layer_ratio",
        "fid",
        "kid",
        "seconds_per_image",
        "nonfinite",
    ]
    lines = [
        f"# Grid summary ({len(df)} cells, extractor {sorted(set(df.extractor.dropna()))})",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    ok = df[~df.nonfinite & df.fid.notna()]
    lines += [
        "",
        "## Best FID per total-FLOP budget (vs DDPM, all T steps, full model)",
        "",
        "| budget <= | cell | FID | FLOP ratio |",
        "|---|---|---|---|",
    ]
    for budget in (0.01, 0.02, 0.05, 0.1, 1.0):
        within = ok[ok.flop_ratio_vs_reference <= budget]
        if len(within):
            b = within.loc[within.fid.idxmin()]
            lines.append(
                f"| {budget} | {b.label} | {b.fid:.3f} | {b.flop_ratio_vs_reference:.4f} |"
            )
    atomic_write_bytes(out / "summary.md", ("\n".join(lines) + "\n").encode())


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def load_config(path: Path) -> list[Cell]:
    """Cells from a TOML file: ``[[cell]]`` tables, or ``[sweep]`` with lists per axis."""
    import itertools
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"cannot read config {path}: {e}") from e
    fields = {f.name for f in dataclasses.fields(Cell)}
    cells = []
    for table in data.get("cell", []):
        unknown = set(table) - fields
        if unknown:
            raise ValueError(f"unknown cell field(s) {sorted(unknown)}; valid: {sorted(fields)}")
        cells.append(Cell(**table))
    if "sweep" in data:
        axes = {k: v if isinstance(v, list) else [v] for k, v in data["sweep"].items()}
        unknown = set(axes) - fields
        if unknown:
            raise ValueError(f"unknown sweep axis {sorted(unknown)}; valid: {sorted(fields)}")
        for combo in itertools.product(*axes.values()):
            cells.append(Cell(**dict(zip(axes, combo, strict=True))))
    if not cells:
        raise ValueError(f"{path} defines no [[cell]] tables and no [sweep]")
    return cells


def _list_choices() -> str:
    lines = ["Axes of a cell (field: default):"]
    for f in dataclasses.fields(Cell):
        lines.append(f"  {f.name}: {f.default!r}")
    lines.append("Choices:")
    for name, reg in CELL_CHOICES.items():
        lines.append(f"  {name}: {', '.join(reg)}")
    lines.append("Policy knobs:")
    for name, cls in POLICIES.items():
        knob = "none" if cls.knob_name is None else f"{cls.knob_name} in {list(cls.knob_range)}"
        lines.append(f"  {name}: {knob} (recipe {cls.recipe})")
    return "\n".join(lines)


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
    p.add_argument("--out", type=Path, default=Path("results/grid"))
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.list:
        print(_list_choices())
        return 0
    try:
        device = resolve_device(a.device)
        if a.config is not None:
            cells = load_config(a.config)
        elif a.quick:
            cells = quick_cells()
        else:
            cells = default_cells(a.samples)
    except (ValueError, TypeError) as e:
        p.error(str(e))
    todo = [c for c in cells if not record_path(a.out, c).exists()]
    if a.dry_run:
        for c in cells:
            state = "todo" if c in todo else "done"
            print(f"{c.key}  {state}  {c.label()}")
        return 0
    log.info("%d cells, %d already done", len(cells), len(cells) - len(todo))
    cache = ArtifactCache(a.cache_dir)
    for cell in tqdm(todo, desc="cells"):
        rec = run_cell(cell, cache, device)
        atomic_write_bytes(record_path(a.out, cell), json.dumps(rec, indent=2).encode())
    keys = {c.key for c in cells}
    records = [r for r in load_records(a.out) if r["key"] in keys]
    write_tables(a.out, records)
    print((a.out / "summary.md").read_text() if records else "no records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
