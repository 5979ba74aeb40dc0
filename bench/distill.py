"""Knowledge distillation from an unpruned teacher during a fine-tune (the usual recipe for
compressed diffusion models: output matching on eps plus the task loss, optionally matching
block features, e.g. BK-SDM, Kim et al. 2023, Sec. 3.2; Diff-Pruning fine-tunes with the task
loss alone).

Output distillation is applied as a blended regression target: for the MSE losses every
recipe uses, ``MSE(e, eps) + w * MSE(e, eps_T)`` equals ``(1 + w) * MSE(e, (eps + w * eps_T) /
(1 + w))`` plus a constant, so the recipe's own loss is evaluated against the blend (weights
normalised: the ``1 + w`` factor is dropped). One student forward serves both terms, and a
layer-wise recipe's readouts are all pulled toward the teacher's final eps. For ``uem`` recipes
the UEM's pseudo-uncertainty target is then the error against the blend, not against eps.

Feature distillation matches the hidden state after every block (the embedding width is never
pruned, so student and teacher states have the same shape): the mean over blocks of their MSE,
captured with forward hooks on the blocks, added with weight ``features``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from models import UViT

__all__ = ["Distiller"]


class Distiller:
    """Teacher outputs for a training step and the feature term of the loss.

    Use as a context manager around the training loop (it hooks the student's blocks while
    ``features > 0``): call :meth:`target` before the recipe's loss, :meth:`feature_loss` after.
    """

    def __init__(self, teacher: UViT, output: float = 0.0, features: float = 0.0) -> None:
        for name, w in (("output", output), ("features", features)):
            if not w >= 0:
                raise ValueError(f"distillation weight {name} must be >= 0, got {w}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.output, self.features = float(output), float(features)
        self._student: list[Tensor | None] = []
        self._teacher: list[Tensor] = []
        self._hooks: list = []
        self.student: UViT | None = None

    def attach(self, student: UViT) -> Distiller:
        """Distil into ``student`` (its blocks hooked for feature distillation, which needs the
        teacher's depth and width); returns self."""
        same = (student.depth, student.cfg.embed_dim) == (
            self.teacher.depth,
            self.teacher.cfg.embed_dim,
        )
        if self.features > 0 and not same:
            raise ValueError(
                "feature distillation needs a teacher of the student's depth and width, got "
                f"{self.teacher.depth}x{self.teacher.cfg.embed_dim} for "
                f"{student.depth}x{student.cfg.embed_dim}"
            )
        self.student = student
        if self.features > 0:
            self._student = [None] * student.depth
            for i, blk in enumerate(student.blocks):
                self._hooks.append(blk.register_forward_hook(self._keep(i)))
        return self

    def _keep(self, i: int):
        def hook(module, args, out):
            if self._student[i] is None:  # the first pass of a step (layer-wise losses run once)
                self._student[i] = out

        return hook

    def detach(self) -> None:
        """Remove the hooks on the student's blocks."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def __enter__(self) -> Distiller:
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    @torch.no_grad()
    def target(self, x_t: Tensor, t: Tensor, cond: Tensor | None, eps: Tensor) -> Tensor:
        """The regression target of this step: ``eps`` blended with the teacher's prediction
        (``eps`` itself when output distillation is off). Records the teacher's block states
        for :meth:`feature_loss`."""
        state = self.teacher.embed(x_t, t, cond)
        feats = []
        for i in range(self.teacher.depth):
            self.teacher.run_block(i, state)
            feats.append(state.h)
        self._teacher = feats if self.features > 0 else []
        self._student = [None] * len(self._student)
        if self.output == 0:
            return eps
        eps_t = self.teacher.readout(state).to(eps.dtype)
        return (eps + self.output * eps_t) / (1 + self.output)

    def feature_loss(self) -> Tensor | None:
        """``features`` times the mean over blocks of MSE(student state, teacher state), or
        None when feature distillation is off."""
        if self.features == 0:
            return None
        if any(s is None for s in self._student):
            raise RuntimeError("the student's blocks did not all run since target()")
        mse = [
            F.mse_loss(s.float(), t.float())
            for s, t in zip(self._student, self._teacher, strict=True)
        ]
        return self.features * torch.stack(mse).mean()
