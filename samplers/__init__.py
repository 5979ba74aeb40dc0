"""Samplers that share one signature, one noise-schedule object and one time-grid module.

>>> import samplers
>>> samplers.available()  # doctest: +NORMALIZE_WHITESPACE
['ddpm', 'ddim', 'dpm-solver', 'dpm-solver++', 'dpm-solver-multistep', 'dpm-solver++-singlestep',
 'dpm-solver++-sde', 'unipc-bh1', 'unipc-bh2', 'euler-maruyama']
"""

from samplers.base import Denoiser, SamplerOutput
from samplers.core import (
    ORDERS,
    SAMPLERS,
    available,
    check_options,
    defaults,
    describe,
    get_sampler,
    sample,
)
from samplers.ddim import ddim, ddpm
from samplers.dpm import (
    dpm_solver,
    dpm_solver_multistep,
    dpm_solver_pp,
    dpm_solver_pp_sde,
    dpm_solver_pp_singlestep,
)
from samplers.grid import ENDS, SPACINGS, time_grid
from samplers.guidance import ClassifierFreeGuidance
from samplers.schedule import SCHEDULES, VPSchedule, make_schedule
from samplers.sde import euler_maruyama
from samplers.unipc import unipc

__all__ = [
    "ENDS",
    "ORDERS",
    "SAMPLERS",
    "SCHEDULES",
    "SPACINGS",
    "ClassifierFreeGuidance",
    "Denoiser",
    "SamplerOutput",
    "VPSchedule",
    "available",
    "check_options",
    "ddim",
    "ddpm",
    "defaults",
    "describe",
    "dpm_solver",
    "dpm_solver_multistep",
    "dpm_solver_pp",
    "dpm_solver_pp_sde",
    "dpm_solver_pp_singlestep",
    "euler_maruyama",
    "get_sampler",
    "make_schedule",
    "sample",
    "time_grid",
    "unipc",
]
