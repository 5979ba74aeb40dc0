"""A content-addressed artifact cache: tensors + JSON metadata in safetensors files.

An artifact's key is a hash of the frozen config that made it (plus its kind and
:data:`CACHE_VERSION`). Files are written to a temporary name, fsynced and renamed, so an
interrupted run never leaves a file that later loads as complete; every file carries a SHA-256 of
its tensor bytes and one of its metadata, so a corrupt or edited file is detected on load and
rebuilt. Nothing is unpickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

__all__ = [
    "CACHE_VERSION",
    "DEFAULT_CACHE_DIR",
    "OMIT_DEFAULT",
    "SHIPPED_DIR",
    "ArtifactCache",
    "CorruptArtifact",
    "atomic_write_bytes",
    "config_hash",
    "file_lock",
    "os_error_line",
    "preflight",
]

log = logging.getLogger(__name__)

# Bump when a change makes old artifacts wrong (training semantics, file layout).
CACHE_VERSION = 1
DEFAULT_CACHE_DIR = Path(__file__).resolve().parents[1] / ".cache"
# Read-only artifacts the project ships for its default sweep (EMA weights made by its own
# training command; ``python -m bench.studies.ship`` regenerates them). Same layout and checksums.
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "models" / "checkpoints"


class CorruptArtifact(RuntimeError):
    """An artifact file that cannot be trusted: unreadable, or its checksums do not match."""

    pass


# A dataclass field declared with ``field(..., metadata=OMIT_DEFAULT)`` enters a config's hash
# only when it differs from its default, so adding such a field keeps every existing key.
OMIT_DEFAULT = {"omit_default": True}


def _as_dict(obj: Any) -> Any:
    """:func:`dataclasses.asdict` (nested dataclasses become plain dicts), leaving out
    ``OMIT_DEFAULT`` fields at their default at every depth."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: _as_dict(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if not (f.metadata.get("omit_default") and getattr(obj, f.name) == f.default)
        }
    if isinstance(obj, (list, tuple)):
        return type(obj)(_as_dict(v) for v in obj)
    if isinstance(obj, dict):
        return {k: _as_dict(v) for k, v in obj.items()}
    return obj


def _canonical(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"__type__": type(obj).__name__, **_canonical(_as_dict(obj))}
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def config_hash(config: Any, kind: str = "") -> str:
    """A short, stable hash of a (dataclass) config, its kind and the cache version."""
    blob = json.dumps(
        {"kind": kind, "version": CACHE_VERSION, "config": _canonical(config)}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder, fsync, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; artifacts are ordinary shared files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _digest(tensors: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@contextmanager
def file_lock(path: Path, wait: bool = True) -> Iterator[bool]:
    """An exclusive advisory lock on ``path`` (``fcntl.flock``; works across processes and, on
    most shared filesystems, across hosts); yields True while held. With ``wait=False`` it
    yields False at once if another process holds it. The lock file is removed on release (while
    still held; a waiter that then gets the old file sees it unlinked and retries), so no lock
    files stay behind. Where ``fcntl`` is missing it is a no-op yielding True: atomic renames
    still keep files whole, only duplicate work is no longer prevented."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield True
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    f = _locked(path, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB), fcntl.flock)
    if f is None:
        yield False
        return
    try:
        yield True
    finally:
        try:
            path.unlink(missing_ok=True)
        finally:
            f.close()  # closing drops the lock


def _locked(path: Path, flags: int, flock: Callable) -> Any:
    """The open lock file at ``path``, locked with ``flags``; None if it is held elsewhere and
    ``flags`` do not wait. A file its last holder removed while we waited is dropped and the new
    one locked instead. The file is closed on any error."""
    while True:
        f = open(path, "a")
        try:
            flock(f.fileno(), flags)
            if _same_file(f, path):
                return f
        except BlockingIOError:
            f.close()
            return None
        except BaseException:
            f.close()
            raise
        f.close()  # removed by its last holder while we waited: lock the new one


def _same_file(f: Any, path: Path) -> bool:
    """Whether the open file ``f`` is still the file at ``path``."""
    try:
        return os.path.samestat(os.fstat(f.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


class ArtifactCache:
    """Artifacts under ``root/<kind>/<key>.safetensors``.

    A key absent from ``root`` is looked up, read-only, in each of ``shipped`` (by default the
    checkpoints that ship with the project); a shipped file is checksum-verified like any other,
    and a corrupt one is ignored (never deleted) so the artifact is rebuilt into ``root``.
    """

    def __init__(
        self, root: str | Path | None = None, shipped: tuple[str | Path, ...] = (SHIPPED_DIR,)
    ) -> None:
        self.root = Path(root) if root is not None else DEFAULT_CACHE_DIR
        self.shipped = tuple(Path(s) for s in shipped)

    def path(self, kind: str, key: str) -> Path:
        """Where artifact ``kind``/``key`` is written under ``root`` (the file may not exist)."""
        return self.root / kind / f"{key}.safetensors"

    def has(self, kind: str, key: str) -> bool:
        """Whether a file for the artifact exists here or in a shipped folder (not verified:
        a cheap test for planning; :meth:`load` verifies)."""
        name = f"{key}.safetensors"
        return any((root / kind / name).exists() for root in (self.root, *self.shipped))

    def save(self, kind: str, key: str, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Path:
        """Write ``tensors`` and ``meta`` as artifact ``kind``/``key`` under ``root``
        (:meth:`write_file`: checksummed, atomic); returns its path."""
        path = self.path(kind, key)
        self.write_file(path, tensors, meta)
        return path

    @staticmethod
    def write_file(path: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        """``tensors`` and JSON ``meta`` to ``path`` in the cache's format (checksummed,
        written atomically); :meth:`read_file` reads it back verified."""
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        meta_json = json.dumps(meta, sort_keys=True)
        header = {
            "meta": meta_json,
            "sha256": _digest(tensors),
            "sha256_meta": hashlib.sha256(meta_json.encode()).hexdigest(),
        }
        atomic_write_bytes(path, st_save(tensors, metadata=header))

    def load(self, kind: str, key: str) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
        """The artifact, or None if absent. A corrupt file is deleted (and None returned)."""
        path = self.path(kind, key)
        if path.exists():
            try:
                return self.read_file(path)
            except CorruptArtifact as e:
                log.warning("cache file %s is corrupt (%s); rebuilding it", path, e)
                path.unlink(missing_ok=True)
        for root in self.shipped:
            shipped = root / kind / f"{key}.safetensors"
            if shipped.exists():
                try:
                    return self.read_file(shipped)
                except CorruptArtifact as e:
                    log.warning("shipped file %s is corrupt (%s); ignoring it", shipped, e)
        return None

    @staticmethod
    def read_file(
        path: Path, require_meta_checksum: bool = False
    ) -> tuple[dict[str, Tensor], dict]:
        """Tensors and metadata of ``path``, both verified against their checksums. Files
        written before metadata had a checksum load with their tensors verified, unless
        ``require_meta_checksum`` (as ``bench.studies.ship --check`` asks of shipped files)."""
        data = path.read_bytes()
        try:
            tensors = st_load(data)
            n = int.from_bytes(data[:8], "little")
            header = json.loads(data[8 : 8 + n])["__metadata__"]
            meta = json.loads(header["meta"])
        except (SafetensorError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise CorruptArtifact(f"unreadable: {e}") from e
        if _digest(tensors) != header.get("sha256"):
            raise CorruptArtifact("checksum mismatch")
        if "sha256_meta" in header:
            if hashlib.sha256(header["meta"].encode()).hexdigest() != header["sha256_meta"]:
                raise CorruptArtifact("metadata checksum mismatch")
        elif require_meta_checksum:
            raise CorruptArtifact("metadata not covered by a checksum (written by an old version)")
        return tensors, meta

    def get_or_build(
        self,
        kind: str,
        key: str,
        build: Callable[[], tuple[dict[str, Tensor], dict[str, Any]]],
    ) -> tuple[dict[str, Tensor], dict[str, Any], bool]:
        """Load the artifact or build and save it. Returns (tensors, meta, was_cached).

        Builders of one key are serialised by a lock file next to it, so two processes (e.g.
        two grid workers) asked for the same artifact build it once; the second loads it.
        """
        hit = self.load(kind, key)
        if hit is not None:
            return hit[0], hit[1], True
        with file_lock(self.root / kind / f".{key}.lock"):
            hit = self.load(kind, key)  # built by another process while we waited
            if hit is not None:
                return hit[0], hit[1], True
            tensors, meta = build()
            self.save(kind, key, tensors, meta)
        return tensors, meta, False


def os_error_line(e: OSError) -> str:
    """One line for a filesystem error: what went wrong and where."""
    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    return f"{e.strerror or type(e).__name__}{where}"


def preflight(*folders: Path) -> None:
    """Check, before any work, that each of ``folders`` could be created and written: a real
    file is written, fsynced and removed in the nearest folder that exists. Nothing is created,
    so a refused command leaves nothing behind; a read-only or full filesystem, an unreadable
    parent, or a file where a folder must be, is one clear ``ValueError``."""
    for folder in folders:
        folder = Path(folder)
        try:
            here = folder
            while not here.exists() and here != here.parent:
                here = here.parent
            if not here.is_dir():
                raise NotADirectoryError(20, os.strerror(20), str(here))
            fd, tmp = tempfile.mkstemp(dir=here, prefix=".preflight-")
            try:
                os.write(fd, b"x" * 4096)
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(tmp)
        except OSError as e:
            raise ValueError(f"cannot write to {folder}: {os_error_line(e)}") from e
