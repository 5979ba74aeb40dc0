"""Options every command shares, worded once."""

from __future__ import annotations

import argparse

__all__ = ["add_run_options"]


def add_run_options(p: argparse.ArgumentParser, out: str | None = None) -> None:
    """``--out`` (when the command writes a folder), ``--cache-dir`` and ``--device``."""
    if out is not None:
        p.add_argument("--out", default=out, help=f"output folder (default: {out})")
    p.add_argument("--cache-dir", default=None, help="artifact cache (default: <repo>/.cache)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
