"""Adaptive computation: training recipes, exit policies, the batch-compacting early-exit
executor, FLOP accounting and knob calibration."""

from adaptive.calibrate import Calibration, calibrate
from adaptive.policies import POLICIES, ExitPolicy, make_policy
from adaptive.recipes import RECIPES, Recipe, get_recipe
from blockloop import EarlyExitDenoiser, ExitContext, ExitTrace

__all__ = [
    "POLICIES",
    "RECIPES",
    "Calibration",
    "EarlyExitDenoiser",
    "ExitContext",
    "ExitPolicy",
    "ExitTrace",
    "Recipe",
    "calibrate",
    "get_recipe",
    "make_policy",
]
