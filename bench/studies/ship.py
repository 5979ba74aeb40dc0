"""Build the artifacts the default sweep needs and ship copies of them with the project.

``python -m bench.studies.ship`` trains (or loads from the cache) every checkpoint, pruned model,
feature extractor and reference-statistics file that ``python -m bench.grid`` uses by default,
with the project's own training code, and writes read-only copies to ``models/checkpoints/``
(checkpoints keep only their EMA weights, the ones every consumer loads). ``ArtifactCache``
falls back to that folder, so a fresh clone skips about 2 hours of CPU training; the files
carry the same keys and SHA-256 checksums as cache files and are verified on every load.
Artifacts that are already shipped are kept (re-written with current checksums), only missing
ones are built. Delete the folder to train everything yourself: training is deterministic for
a given machine and thread count, but not across thread counts, so retrained weights (and the
FIDs made with them) can differ slightly from the shipped ones.

``python -m bench.studies.ship --check`` verifies that every needed artifact is shipped and intact.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

from bench.cache import SHIPPED_DIR, ArtifactCache, CorruptArtifact
from bench.cell import Cell, cell_prune_config, cell_train_config
from bench.cli import make_parser
from bench.grid import default_cells
from bench.metrics import get_extractor, reference_stats
from bench.prune import load_or_prune
from bench.train import load_or_train

__all__ = ["main", "needed_artifacts"]

log = logging.getLogger(__name__)


class _Missing(FileNotFoundError):
    pass


class _Recorder(ArtifactCache):
    """A cache that notes every (kind, key) looked up. With ``build=False`` (the check) it
    builds nothing: each artifact must be present and intact, its metadata checksum included,
    and every one that is not is noted in ``problems``."""

    def __init__(self, *a, build: bool = True, **k) -> None:
        super().__init__(*a, **k)
        self.build = build
        self.used: list[tuple[str, str]] = []
        self.problems: list[str] = []

    def get_or_build(self, kind: str, key: str, build):
        if self.build:
            return super().get_or_build(kind, key, build)
        if (kind, key) not in self.used:
            self.used.append((kind, key))
        problem = self._problem(kind, key)
        if problem is not None:
            if problem not in self.problems:
                self.problems.append(problem)
            raise _Missing(problem)
        tensors, meta = self.load(kind, key)
        return tensors, meta, True

    def _problem(self, kind: str, key: str) -> str | None:
        for root in self.shipped:
            path = root / kind / f"{key}.safetensors"
            if path.exists():
                try:
                    self.read_file(path, require_meta_checksum=True)
                except CorruptArtifact as e:
                    return f"{kind}/{key}: corrupt ({e})"
                return None
        return f"{kind}/{key}: not shipped"

    def load(self, kind: str, key: str):
        if (kind, key) not in self.used:
            self.used.append((kind, key))
        return super().load(kind, key)


def shipped_cells() -> list:
    """The cells whose artifacts ship: the default sweep, the 13-block (U-ViT-S depth) `full`
    and `uem` digits models of the DeeDiff ablation, and the DiT's (`dit-tiny`) `full` and `uem`
    models (12,000 steps of CPU training; the DiT sweep's other fine-tunes take minutes)."""
    extra = [Cell(model="tiny13"), Cell(model="tiny13", recipe="uem", policy="uem")]
    extra += [Cell(model="dit-tiny"), Cell(model="dit-tiny", recipe="uem", policy="uem")]
    return default_cells() + extra


def needed_artifacts(
    cache: ArtifactCache, cells=None, build: bool = True
) -> tuple[list[tuple[str, str]], list[str]]:
    """Build (or load) everything ``cells`` (default: :func:`shipped_cells`) need; return the
    (kind, key) of each artifact touched, dependencies first, and the problems found. With
    ``build=False`` nothing is built: every missing or corrupt artifact is a problem (all of
    them are listed, not only the first)."""
    rec = _Recorder(cache.root, cache.shipped, build=build)

    def attempt(fn, *args) -> None:
        try:
            fn(*args)
        except _Missing:  # noted in rec.problems; the check goes on with the next artifact
            pass

    def stats(dataset: str) -> None:
        reference_stats(dataset, get_extractor("cnn", dataset, rec), "train", rec)

    for cell in cells or shipped_cells():
        tcfg = cell_train_config(cell)
        attempt(load_or_train, tcfg, rec, "cpu", None, build)  # progress bars when building
        if cell.prune_ratio > 0:
            attempt(load_or_prune, cell_prune_config(cell, tcfg), rec, "cpu", build)
        attempt(stats, cell.dataset)
    return rec.used, rec.problems


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.studies.ship``: build and ship the default sweep's artifacts, or with
    ``--check`` verify the shipped ones; returns 1 if the check fails."""
    p = make_parser("bench.studies.ship", __doc__)
    p.add_argument("--check", action="store_true", help="verify the shipped files, build none")
    p.add_argument("--cache-dir", default=None, help="artifact cache (default: <repo>/.cache)")
    p.add_argument("--to", type=Path, default=SHIPPED_DIR, help="where to write the copies")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.check:
        # Only the shipped folder is consulted (an empty root), and nothing is built.
        with tempfile.TemporaryDirectory() as empty:
            used, problems = needed_artifacts(ArtifactCache(empty, shipped=(a.to,)), build=False)
        if problems:
            print(f"{len(problems)} of {len(used)} needed artifacts are not shipped intact:")
            print("\n".join(f"  {x}" for x in problems))
            print("rebuild them with: python -m bench.studies.ship")
            return 1
        print(f"all {len(used)} artifacts of the default sweep are shipped and intact")
        return 0
    # Artifacts already shipped are reused, not rebuilt: training is not bit-reproducible
    # across thread counts (measured: the `full` checkpoint rebuilt at 1 thread differs from
    # the one trained at 2 threads by up to 0.59 in a weight), so a rebuild would silently
    # change every number made with the shipped file. Delete a file to have it rebuilt.
    cache = ArtifactCache(a.cache_dir, shipped=(a.to,))
    dest = ArtifactCache(a.to, shipped=())
    used, _ = needed_artifacts(cache)
    for kind, key in used:
        hit = cache.load(kind, key)
        if hit is None:
            raise RuntimeError(f"{kind}/{key} was not built")  # needed_artifacts built it
        tensors, meta = hit
        if kind == "checkpoint":
            tensors = {k: v for k, v in tensors.items() if k.startswith("ema.")}
        path = dest.save(kind, key, tensors, meta)
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        print(f"{path}  ({size / 2**20:.1f} MiB)")
    keep = {dest.path(kind, key) for kind, key in used}
    for stale in sorted(set(a.to.glob("*/*.safetensors")) - keep):
        stale.unlink()  # an artifact no shipped cell needs any more (e.g. a replaced recipe)
        print(f"removed {stale}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
