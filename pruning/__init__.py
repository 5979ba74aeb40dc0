"""Structured pruning with torch-pruning, fine-tuning, and replayable pruning recipes."""

from pruning.core import IMPORTANCES, PruneResult, prune, replay

__all__ = ["IMPORTANCES", "PruneResult", "prune", "replay"]
