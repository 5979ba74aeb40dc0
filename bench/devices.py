"""Where and in what precision a command runs: ``--device`` and ``--autocast``."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["AUTOCAST", "autocast", "resolve_device"]

# --autocast choices: the dtype torch.autocast runs the forward in (None: full precision).
AUTOCAST = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``'s type; a no-op for ``dtype=None``."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def resolve_device(device: str) -> torch.device:
    """'cpu', 'cuda', 'cuda:N' or 'auto'; a clear error if CUDA is asked for but absent."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device} asked for, but torch sees no CUDA device; use cpu")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise ValueError(
            f"unknown device {device!r}; valid choices: cpu, cuda, cuda:N, auto"
        ) from e
