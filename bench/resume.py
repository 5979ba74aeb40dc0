"""Resumable training: the whole state of a run, saved atomically every N steps.

A run's state is its weights, EMA weights, optimiser and gradient-scaler state, the step, the
random generators (the batch/noise generator and torch's global one) and the position in the
shuffled data: everything the next step depends on. :func:`bench.train.train` saves it every
``every`` steps to one safetensors file (temp file, fsync, rename: a kill leaves the last whole
state) and, when the file exists, continues from it. At one thread count a resumed run ends in
the same weights as an uninterrupted one (``tests/test_resume.py``).

The file sits under ``<cache>/resume/`` named by the artifact it builds, so a rerun of the same
command finds it; its metadata repeats that identity, and a state that does not match, or does
not verify against its checksums, is a :class:`ResumeError` (the file is kept, never silently
replaced). The caller deletes the state once the finished artifact is saved
(:meth:`Resume.discard`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench.cache import ArtifactCache, CorruptArtifact
from bench.steps import BatchStream

__all__ = ["DEFAULT_SAVE_EVERY", "Resume", "ResumeError", "RunState"]

log = logging.getLogger(__name__)

# Steps between saves: ~30-70 s of a CPU `tiny` run, a few seconds of saving each time.
DEFAULT_SAVE_EVERY = 250


class ResumeError(ValueError):
    """A resume state that cannot be used (another run's, or corrupt); the file is kept."""


@dataclass
class RunState:
    """The live objects of a training run whose state :class:`Resume` saves and restores."""

    model: nn.Module
    ema: nn.Module
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    gen: torch.Generator
    stream: BatchStream


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            if isinstance(v, Tensor):
                tensors[f"opt.{idx}.{name}"] = v.detach().clone()
            else:
                scalars[f"{idx}.{name}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            idx, name = key[4:].split(".", 1)
            state.setdefault(int(idx), {})[name] = v
    for key, v in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


@dataclass(frozen=True)
class Resume:
    """Where a run's state lives, how often it is saved, and what it must belong to.

    ``identity`` is any JSON-able description of the run (config hash, mode, length); a state
    file whose recorded identity differs is refused. ``every = 0`` never saves (and a state
    left by an earlier run is still resumed)."""

    path: Path
    identity: dict[str, Any]
    every: int = DEFAULT_SAVE_EVERY

    @classmethod
    def under(cls, cache: ArtifactCache, name: str, identity: dict[str, Any], every: int):
        """The state of the run that builds artifact ``name`` (e.g. ``checkpoint-<key>``)."""
        if every < 0:
            raise ValueError(f"save_every must be >= 0 (0: never save), got {every}")
        return cls(cache.root / "resume" / f"{name}.safetensors", identity, every)

    def due(self, done: int, total: int) -> bool:
        """Whether to save after ``done`` steps: every ``every`` steps and after the last."""
        return self.every > 0 and (done % self.every == 0 or done == total)

    def save(self, run: RunState, done: int, loss_ema: float | None, seconds: float) -> None:
        """Write the run's whole state after ``done`` steps to ``path`` (atomically), with the
        identity, the loss EMA and the seconds spent so far."""
        tensors = {f"model.{k}": v.detach().clone() for k, v in run.model.state_dict().items()}
        tensors.update({f"ema.{k}": v.detach().clone() for k, v in run.ema.state_dict().items()})
        opt_tensors, opt_meta = _flatten_optimizer(run.opt)
        tensors.update(opt_tensors)
        tensors["rng.gen"] = run.gen.get_state()
        tensors["rng.torch"] = torch.get_rng_state()
        stream_tensors, stream_meta = run.stream.state()
        tensors.update({f"stream.{k}": v for k, v in stream_tensors.items()})
        meta = {
            "identity": self.identity,
            "step": done,
            "loss_ema": loss_ema,
            "seconds": seconds,
            "optimizer": opt_meta,
            "scaler": run.scaler.state_dict(),
            "stream": stream_meta,
        }
        ArtifactCache.write_file(self.path, tensors, meta)

    def restore(self, run: RunState) -> tuple[int, float | None, float]:
        """Load the saved state into ``run``; returns (steps done, loss EMA, train seconds), or
        (0, None, 0.0) when there is no state to resume."""
        if not self.path.exists():
            return 0, None, 0.0
        try:
            tensors, meta = ArtifactCache.read_file(self.path)
        except CorruptArtifact as e:
            raise self._refuse(f"is corrupt ({e})") from e
        if json.loads(json.dumps(self.identity)) != meta.get("identity"):
            raise self._refuse(f"belongs to another run: {meta.get('identity')}")
        try:
            self._load(run, tensors, meta)
        except (KeyError, RuntimeError, ValueError) as e:
            raise self._refuse(f"does not fit this model ({e})") from e
        log.info("resuming from %s at step %d", self.path, meta["step"])
        return int(meta["step"]), meta["loss_ema"], float(meta["seconds"])

    @staticmethod
    def _load(run: RunState, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        def part(prefix: str) -> dict[str, Tensor]:
            return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

        run.model.load_state_dict(part("model."))
        run.ema.load_state_dict(part("ema."))
        run.opt.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
        if meta["scaler"]:
            run.scaler.load_state_dict(meta["scaler"])
        run.gen.set_state(tensors["rng.gen"])
        torch.set_rng_state(tensors["rng.torch"])
        run.stream.restore(part("stream."), meta["stream"])

    def _refuse(self, why: str) -> ResumeError:
        return ResumeError(
            f"resume state {self.path} {why}; it was kept: delete it to train from step 0"
        )

    def discard(self) -> None:
        """Delete the state (after the finished artifact is saved)."""
        self.path.unlink(missing_ok=True)
