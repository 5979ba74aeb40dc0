"""Every figure of the documentation (README, docs/findings/), redrawn from its sweep's records.

python -m bench.studies.figures redraws each figure under docs/figures/ from its sweep's records
(bench.report for grid sweeps, the ablation's own report for the DeeDiff ablation) and copies
the PNG in atomically. A sweep without records is listed with the command that makes them,
and the command exits 1 after drawing the rest; --run runs those sweeps first (resumable;
from a cold cache the DeeDiff ablation alone is about 95 minutes on 2 cores: see
docs/findings/deediff.md).

Sweeps (--only picks some):

  grid      python -m bench.grid                          fid_vs_flops, exit_heatmap,
                                                          wall_vs_flops, samples
  deediff   python -m bench.studies.ablation                      ablation_fid_vs_flops,
                                                          ablation_heatmaps, composition
  pruning   bench/sweeps/pruning.toml -> pruning-sweep    fid_vs_prune
  guidance  bench/sweeps/guidance.toml -> guidance        fid_vs_guidance
  text      bench/sweeps/text.toml -> text                text_fid_vs_guidance
  mnist     bench/sweeps/mnist.toml -> mnist              mnist_fid_vs_flops, mnist_samples,
                                                          mnist_exit_heatmap
  curve     python -m bench.studies.curve (batch 64, 10k steps)   mnist_curve, mnist_samples_53min
            -> curve-mnist-b64
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.cache import ArtifactCache, atomic_write_bytes
from bench.cli import make_parser

__all__ = ["SWEEPS", "main", "redraw"]

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "figures"


@dataclass(frozen=True)
class Sweep:
    """A sweep the documentation draws from: its records' folder (under ``--results``), the grid
    arguments that make them (``None``: the DeeDiff ablation's own command), and the figures
    of its report that the documentation shows."""

    folder: str
    config: str | None
    figures: tuple[str, ...]
    ablation: bool = False
    prefix: str = ""  # prepended to the figures' names in docs/ (two sweeps draw one name)
    curve: bool = False  # bench.studies.curve's training curve, not a grid
    args: tuple[str, ...] = ()  # bench.studies.curve's options beyond --out

    def command(self, results: Path) -> str:
        out = results / self.folder
        if self.curve:
            return " ".join(["python -m bench.studies.curve", *self.args, "--out", str(out)])
        if self.ablation:
            return f"python -m bench.studies.ablation --out {out}"
        config = f" --config {self.config}" if self.config else ""
        return f"python -m bench.grid{config} --out {out}"


SWEEPS: dict[str, Sweep] = {
    "grid": Sweep("grid", None, ("fid_vs_flops", "exit_heatmap", "wall_vs_flops", "samples")),
    "deediff": Sweep(
        "deediff",
        None,
        ("ablation_fid_vs_flops", "ablation_heatmaps", "composition"),
        ablation=True,
    ),
    "pruning": Sweep("pruning-sweep", "bench/sweeps/pruning.toml", ("fid_vs_prune",)),
    "guidance": Sweep("guidance", "bench/sweeps/guidance.toml", ("fid_vs_guidance",)),
    "text": Sweep("text", "bench/sweeps/text.toml", ("fid_vs_guidance",), prefix="text_"),
    "mnist": Sweep(
        "mnist",
        "bench/sweeps/mnist.toml",
        ("fid_vs_flops", "samples", "exit_heatmap"),
        prefix="mnist_",
    ),
    # The MNIST curve (docs/findings/mnist.md): the better of the two measured runs.
    "curve": Sweep(
        "curve-mnist-b64",
        None,
        ("curve", "samples_final"),
        prefix="mnist_",
        curve=True,
        args=("--steps", "10000", "--batch-size", "64", "--lr", "1e-3", "--every", "1000"),
    ),
}


def _has_records(sweep: Sweep, folder: Path) -> bool:
    if sweep.curve:
        return (folder / "curve.csv").exists()
    return any((folder / "records").glob("*.json"))


def _run(sweep: Sweep, folder: Path, cache_dir: str | None) -> int:
    from bench import grid
    from bench.studies import ablation, curve

    cache = ["--cache-dir", cache_dir] if cache_dir else []
    if sweep.curve:
        return curve.main([*sweep.args, "--out", str(folder), *cache])
    if sweep.ablation:
        return ablation.main(["--out", str(folder), *cache])
    config = ["--config", str(ROOT / sweep.config)] if sweep.config else []
    return grid.main([*config, "--out", str(folder), *cache])


def redraw(sweep: Sweep, folder: Path, docs: Path, cache: ArtifactCache) -> list[Path]:
    """Draw ``sweep``'s report from the records under ``folder`` and copy its documented figures
    into ``docs``; returns the copies. A figure the report did not draw is a ValueError."""
    from bench.report import make_report
    from bench.studies.ablation import write_ablation

    report = folder / "report"
    if sweep.curve:
        report = folder  # bench.studies.curve draws curve.png itself
    elif sweep.ablation:
        write_ablation(folder, cache)
    else:
        make_report(folder, report, cache=cache)
    copies = []
    for name in sweep.figures:
        src = report / f"{name}.png"
        if not src.exists():
            raise ValueError(f"the report of {folder} drew no {name}.png (too few cells?)")
        dst = docs / f"{sweep.prefix}{src.name}"
        atomic_write_bytes(dst, src.read_bytes())
        copies.append(dst)
    return copies


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.studies.figures``: redraw the documented figures; returns 1 if a sweep
    has no records, else the worst exit status of the sweeps it ran."""
    p = make_parser("bench.studies.figures", __doc__)
    p.add_argument(
        "--only", nargs="+", choices=list(SWEEPS), default=list(SWEEPS), help="sweeps to draw"
    )
    p.add_argument(
        "--results", type=Path, default=ROOT / "results", help="folder holding each sweep's --out"
    )
    p.add_argument("--docs", type=Path, default=DOCS, help="where the documented figures live")
    p.add_argument("--run", action="store_true", help="run sweeps that have no records first")
    p.add_argument("--cache-dir", default=None, help="artifact cache (default: <repo>/.cache)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cache = ArtifactCache(a.cache_dir)
    missing, rc = [], 0
    for name in a.only:
        sweep = SWEEPS[name]
        folder = a.results / sweep.folder
        if a.run:
            rc = max(rc, _run(sweep, folder, a.cache_dir))
        if not _has_records(sweep, folder):
            missing.append(f"{name}: no records under {folder}; run {sweep.command(a.results)}")
            continue
        try:
            for path in redraw(sweep, folder, a.docs, cache):
                print(path)
        except ValueError as e:
            p.error(str(e))
    for line in missing:
        log.error("%s", line)
    return 1 if missing else rc


if __name__ == "__main__":
    sys.exit(main())
