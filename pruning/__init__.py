"""Structured pruning with torch-pruning and replayable pruning recipes.

Imports only ``models`` and torch-pruning; the harness glue (cached pruned checkpoints, the
fine-tune, the ``python -m bench.prune`` command) lives in :mod:`bench.prune`.
"""

from pruning.core import (
    DEFAULT_IMPORTANCE,
    IMPORTANCES,
    Importance,
    PruneResult,
    check_prune,
    head_schedule,
    prune,
    replay,
)

__all__ = [
    "DEFAULT_IMPORTANCE",
    "IMPORTANCES",
    "Importance",
    "PruneResult",
    "check_prune",
    "head_schedule",
    "prune",
    "replay",
]
