"""Samplers that share one signature and one noise-schedule object.

>>> import samplers
>>> samplers.available()
['ddpm', 'ddim', 'dpm-solver', 'dpm-solver++']
"""

from samplers.core import (
    SAMPLERS,
    Denoiser,
    SamplerOutput,
    available,
    ddim,
    ddpm,
    dpm_solver,
    dpm_solver_pp,
    get_sampler,
    sample,
)
from samplers.guidance import ClassifierFreeGuidance
from samplers.schedule import SCHEDULES, VPSchedule, make_schedule

__all__ = [
    "SAMPLERS",
    "SCHEDULES",
    "ClassifierFreeGuidance",
    "Denoiser",
    "SamplerOutput",
    "VPSchedule",
    "available",
    "ddim",
    "ddpm",
    "dpm_solver",
    "dpm_solver_pp",
    "get_sampler",
    "make_schedule",
    "sample",
]
